"""llmesr: long-tail sequential recommendation enhanced by language-model embeddings."""

__version__ = "0.1.0"

from llmesr.errors import LlmesrError  # noqa: E402

__all__ = ["LlmesrError", "__version__"]
