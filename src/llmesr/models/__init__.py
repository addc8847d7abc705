"""Sequence backbones, item views, cross-attention, the recommender and self-distillation."""
