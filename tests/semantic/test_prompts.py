"""Item and user prompts: paper strings verbatim, clean prompts with missing fields."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmesr.errors import LlmesrError
from llmesr.semantic.prompts import PromptBuilder, PromptConfig


def table(**cols):
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"item_id": np.arange(1, n + 1), "raw_id": [f"r{i}" for i in range(n)],
                         **{k: pd.Series(v, dtype=object) for k, v in cols.items()}})


def test_paper_beauty_verbatim():
    t = table(title=["Lipstick"], brand=[None], price=[3.5],
              categories=[[["Beauty", "Makeup", "Lips"], ["Other"]]], description=[None])
    p = PromptBuilder(t, PromptConfig(domain="beauty", style="paper")).item_prompts()[0]
    assert p == ("The beauty item has following attributes: \n name is Lipstick; brand is "
                 "unknown; price is 3.5. \nThe item has following features: Beauty; Makeup; "
                 "Lips; . \nThe item has following descriptions: unknown. \n")


def test_paper_fashion_verbatim_with_long_title_and_date_bug():
    t = table(title=["x" * 101], brand=["Acme"], date=["5 star"], price=[""],
              feature=[["soft", "warm"]], description=[None])
    p = PromptBuilder(t, PromptConfig(domain="fashion", style="paper")).item_prompts()[0]
    assert p.startswith("The fashion item has following attributes: \n name is unknown; brand "
                        "is Acme; score is 5 star; price is unknown. \n")
    assert "The item has following features: soft; warm; . \n" in p
    assert "descriptions" not in p  # the key is missing (None) so the part is empty


def test_paper_yelp_verbatim():
    t = table(name=["Cafe"], categories=[["Food", "Coffee"]], type=["business"], open=[True],
              review_count=[12], city=["Reno"], stars=[4.5])
    p = PromptBuilder(t, PromptConfig(domain="poi", style="paper")).item_prompts()[0]
    assert p == ("The point of interest has following attributes: \n name is Cafe; category is "
                 "Food Coffee ; type is business; open status is True; review count is 12; "
                 "city is Reno; average score is 4.5.")


def test_clean_prompts_skip_missing_fields():
    t = table(title=["Balm", None], brand=[None, "Nivea"], description=["", "soft skin"])
    b = PromptBuilder(t, PromptConfig(domain="beauty"))
    assert b.item_prompts() == [
        "The beauty item has following attributes: \n name is Balm. \n",
        "The beauty item has following attributes: \n brand is Nivea. \nThe item has "
        "following descriptions: soft skin. \n"]
    empty = PromptBuilder(table(title=[None]), PromptConfig(domain="movie")).item_prompts()
    assert empty == ["A movie."]


def test_field_mapping_and_custom_template():
    t = table(title=["Place"], description=["Bars, Food"])
    b = PromptBuilder(t, PromptConfig(domain="poi", fields={"categories": "description"}))
    assert b.item_prompts()[0] == ("The point of interest has following attributes: \n name "
                                   "is Place; category is Bars, Food.")
    c = PromptBuilder(t, PromptConfig(item_template="{title} [{brand}]")).item_prompts()[0]
    assert c == "Place []"
    with pytest.raises(LlmesrError, match="unknown role"):
        PromptConfig(item_template="{colour}").validate()
    with pytest.raises(LlmesrError, match="not a column"):
        PromptBuilder(t, PromptConfig(fields={"title": "nope"}))


def test_user_prompt_uses_training_items_only_and_keeps_the_tail():
    t = table(title=["A", "B", "C", "D"])
    offsets = np.array([0, 4, 6])
    items = np.array([1, 2, 3, 4, 2, 1])
    train_len = np.array([2, 2])  # user 1: n=4 -> train A B; user 2: n=2 -> all
    b = PromptBuilder(t, PromptConfig(domain="beauty", style="paper"))
    assert b.user_prompts(offsets, items, train_len) == [
        "The user has visited following fashions: \nA, B,  \nplease conclude the user's "
        "perference.",
        "The user has visited following fashions: \nB, A,  \nplease conclude the user's "
        "perference."]
    short = PromptBuilder(t, PromptConfig(domain="movie", history_chars=4))
    assert "\nB, A, \n" not in short.user_prompts(offsets, items, train_len)[0]
    assert short.user_prompts(offsets, items, train_len)[0].split("\n")[1] == " B,  "
