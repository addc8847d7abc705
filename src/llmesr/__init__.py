"""llmesr: long-tail sequential recommendation enhanced by language-model embeddings.

The public Python API (see :mod:`llmesr.api` and the documentation's "Python API" page)::

    import llmesr
    ds = llmesr.Dataset.from_frames(interactions, items, user="user_id", item="item_id",
                                    time="timestamp", text=["title", "genres"], out="data/mine")
    ds.embed()
    run = llmesr.train(ds, model="llmesr", backbone="sasrec", out="runs/mine", epochs=20)
    run.metrics()
    run.recommend(["i1", "i7"], k=10)
"""

__version__ = "0.1.0"

from llmesr.errors import LlmesrError  # noqa: E402
from llmesr.api import Dataset, Run, load_run, train  # noqa: E402

__all__ = ["Dataset", "LlmesrError", "Run", "__version__", "load_run", "train"]
