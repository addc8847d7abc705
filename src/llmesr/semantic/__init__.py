"""The semantic layer: prompts, text encoders, embedding cache, PCA and similar-user retrieval."""
