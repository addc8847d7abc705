"""Tests for the MovieLens 100K / 1M readers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from llmesr.data.readers.movielens import (ML100K_GENRES, read_movielens_1m,
                                           read_movielens_100k)
from llmesr.errors import DataFormatError, LlmesrError

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n" \
         "196\t1\t5\t874965758\n"


def _flags(*on: int) -> str:
    return "|".join("1" if k in on else "0" for k in range(19))


U_ITEM_LINES = [
    f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
    f"{_flags(3, 4, 5)}",
    f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{_flags(5)}",
    f"267|unknown|||http://us.imdb.com/M/title-exact?unknown|{_flags(0)}",
    f"302|Café Society (1995)|01-Jan-1995||http://us.imdb.com/Title?Caf%E9+Society|{_flags(8)}",
    f"377|Heavyweights (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Heavyweights|"
    f"{_flags(4, 5)}",
]

U_GENRE = "".join(f"{g}|{k}\n" for k, g in enumerate(ML100K_GENRES)) + "\n"


def _ml100k(folder: Path, *, data: str = U_DATA, item_lines: list[str] | None = None,
            genre: str | None = U_GENRE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_bytes(data.encode("latin-1"))
    lines = U_ITEM_LINES if item_lines is None else item_lines
    (folder / "u.item").write_bytes("".join(f"{x}\n" for x in lines).encode("latin-1"))
    if genre is not None:
        (folder / "u.genre").write_bytes(genre.encode("latin-1"))
    return folder


def test_ml100k_interactions_exact(tmp_path: Path) -> None:
    folder = _ml100k(tmp_path / "ml-100k")
    raw = read_movielens_100k(folder)
    inter = raw.interactions
    assert list(inter.columns) == ["user", "item", "timestamp", "rating"]
    assert inter["user"].tolist() == ["196", "186", "22", "196"]
    assert inter["item"].tolist() == ["242", "302", "377", "1"]
    assert inter["timestamp"].tolist() == [881250949, 891717742, 878887116, 874965758]
    assert inter["rating"].tolist() == [3.0, 3.0, 1.0, 5.0]
    assert inter["timestamp"].dtype == "int64"
    assert inter["rating"].dtype == "float64"
    assert pd.api.types.is_string_dtype(inter["user"])
    assert pd.api.types.is_string_dtype(inter["item"])
    assert raw.reader == "movielens-100k"
    assert raw.text_fields == ["title", "genres"]
    assert raw.options == {"encoding": "latin-1"}
    assert raw.sources == [folder / "u.data", folder / "u.item", folder / "u.genre"]
    raw.validate()


def test_ml100k_items_exact(tmp_path: Path) -> None:
    raw = read_movielens_100k(_ml100k(tmp_path / "ml-100k"))
    assert list(raw.items.columns) == ["item", "title", "genres", "release_date"]
    assert raw.items.to_dict("records") == [
        {"item": "1", "title": "Toy Story (1995)",
         "genres": ["Animation", "Children's", "Comedy"], "release_date": "01-Jan-1995"},
        {"item": "242", "title": "Kolya (1996)", "genres": ["Comedy"],
         "release_date": "24-Jan-1997"},
        {"item": "267", "title": "unknown", "genres": ["unknown"], "release_date": None},
        {"item": "302", "title": "Café Society (1995)", "genres": ["Drama"],
         "release_date": "01-Jan-1995"},
        {"item": "377", "title": "Heavyweights (1994)", "genres": ["Children's", "Comedy"],
         "release_date": "01-Jan-1994"},
    ]


def test_ml100k_u_data_source_and_fixed_genres(tmp_path: Path) -> None:
    folder = _ml100k(tmp_path / "ml-100k", genre=None)
    raw = read_movielens_100k(folder / "u.data")
    assert raw.sources == [folder / "u.data", folder / "u.item"]
    assert raw.items["genres"].tolist()[0] == ["Animation", "Children's", "Comedy"]
    assert len(raw.interactions) == 4


def test_ml100k_genre_names_come_from_u_genre(tmp_path: Path) -> None:
    names = ["G0", "G1", "G2"]
    genre = "".join(f"{g}|{k}\n" for k, g in enumerate(names))
    folder = _ml100k(tmp_path / "x", data="1\t7\t4\t100\n", genre=genre,
                     item_lines=["7|Seven (1995)|01-Jan-1995|||0|1|1"])
    raw = read_movielens_100k(folder)
    assert raw.items.to_dict("records") == [
        {"item": "7", "title": "Seven (1995)", "genres": ["G1", "G2"],
         "release_date": "01-Jan-1995"}]


def test_ml100k_explicit_items_path(tmp_path: Path) -> None:
    folder = _ml100k(tmp_path / "a")
    (folder / "u.item").rename(tmp_path / "movies.item")
    with pytest.raises(LlmesrError, match=r"u\.item.*--items"):
        read_movielens_100k(folder)
    raw = read_movielens_100k(folder, tmp_path / "movies.item")
    assert raw.sources == [folder / "u.data", tmp_path / "movies.item"]  # no u.genre there
    assert raw.items["item"].tolist() == ["1", "242", "267", "302", "377"]


def test_ml100k_missing_files(tmp_path: Path) -> None:
    with pytest.raises(LlmesrError, match=r"u\.data"):
        read_movielens_100k(tmp_path)
    with pytest.raises(LlmesrError, match="nothere"):
        read_movielens_100k(tmp_path / "nothere")


@pytest.mark.parametrize("bad, message", [
    ("5\t6\t4", "expected 4 fields"),
    ("5\t6\t4\t100\t7", "expected 4 fields"),
    ("5\t6\tfour\t100", "rating 'four'"),
    ("5\t6\tnan\t100", "rating 'nan'"),
    ("5\t6\t4\t1.5", "timestamp '1.5'"),
    ("5\t6\t4\t", "timestamp ''"),
    ("\t6\t4\t100", "empty user id"),
    ("5 6 4 100", "expected 4 fields"),
])
def test_ml100k_malformed_rating_line(tmp_path: Path, bad: str, message: str) -> None:
    folder = _ml100k(tmp_path / "m", data=U_DATA.replace("22\t377\t1\t878887116\n",
                                                          f"\n{bad}\n"))
    with pytest.raises(DataFormatError) as exc:
        read_movielens_100k(folder)
    assert f"u.data:4: {message}" in str(exc.value)


def test_ml100k_bad_bytes_in_utf8_mode(tmp_path: Path) -> None:
    folder = _ml100k(tmp_path / "m", data=U_DATA + "1\t2\t3\t4\n")
    (folder / "u.data").write_bytes(U_DATA.encode() + b"1\t2\xe9\t3\t4\n")
    # (the line number comes from llmesr.data.io.iter_lines, which decodes in blocks)
    with pytest.raises(DataFormatError, match=r"u\.data:\d+: not valid utf-8"):
        read_movielens_100k(folder, encoding="utf-8")
    # the default latin-1 decodes every byte
    assert read_movielens_100k(folder).interactions["item"].tolist()[-1] == "2é"


@pytest.mark.parametrize("line, message", [
    ("9|Short|01-Jan-1995||url|0|1", "expected 24"),
    (f"9|Flag|01-Jan-1995||url|{_flags(1).replace('1', '2', 1)}", "must be 0 or 1"),
    (f"1|Dup|01-Jan-1995||url|{_flags(1)}", "appears again (first on line 1)"),
])
def test_ml100k_malformed_item_line(tmp_path: Path, line: str, message: str) -> None:
    folder = _ml100k(tmp_path / "m", item_lines=[*U_ITEM_LINES[:2], line])
    with pytest.raises(DataFormatError) as exc:
        read_movielens_100k(folder)
    assert "u.item:3: " in str(exc.value)
    assert message in str(exc.value)


def test_ml100k_bad_genre_file(tmp_path: Path) -> None:
    folder = _ml100k(tmp_path / "m", genre="unknown|0\nAction|x\n")
    with pytest.raises(DataFormatError, match=r"u\.genre:2: genre index 'x'"):
        read_movielens_100k(folder)
    folder = _ml100k(tmp_path / "m", genre="unknown|0\nAction|2\n")
    with pytest.raises(DataFormatError, match="without gaps"):
        read_movielens_100k(folder)


# ---------------------------------------------------------------------------------------------
# ml-1m

RATINGS_DAT = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n" \
              "10::3952::1::978224375\n"
MOVIES_DAT = ("1::Toy Story (1995)::Animation|Children's|Comedy\n"
              "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
              "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
              "2000::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Sci-Fi\n"
              "3952::Contender, The (2000)::Drama|Thriller\n"
              "3953::Café Flesh (1982)::(no genres listed)\n")


def _ml1m(folder: Path, *, ratings: str = RATINGS_DAT, movies: str | None = MOVIES_DAT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_bytes(ratings.encode("latin-1"))
    if movies is not None:
        (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def test_ml1m_exact(tmp_path: Path) -> None:
    folder = _ml1m(tmp_path / "ml-1m")
    raw = read_movielens_1m(folder)
    inter = raw.interactions
    assert list(inter.columns) == ["user", "item", "timestamp", "rating"]
    assert inter["user"].tolist() == ["1", "1", "2", "10"]
    assert inter["item"].tolist() == ["1193", "661", "1193", "3952"]
    assert inter["timestamp"].tolist() == [978300760, 978302109, 978298413, 978224375]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert inter["timestamp"].dtype == "int64"
    assert inter["rating"].dtype == "float64"
    assert pd.api.types.is_string_dtype(inter["user"])
    assert raw.reader == "movielens-1m"
    assert raw.text_fields == ["title", "genres"]
    assert raw.sources == [folder / "ratings.dat", folder / "movies.dat"]
    assert raw.items.to_dict("records") == [
        {"item": "1", "title": "Toy Story (1995)",
         "genres": ["Animation", "Children's", "Comedy"]},
        {"item": "661", "title": "James and the Giant Peach (1996)",
         "genres": ["Animation", "Children's", "Musical"]},
        {"item": "1193", "title": "One Flew Over the Cuckoo's Nest (1975)", "genres": ["Drama"]},
        {"item": "2000", "title": "Star Wars: Episode IV - A New Hope (1977)",
         "genres": ["Action", "Adventure", "Sci-Fi"]},
        {"item": "3952", "title": "Contender, The (2000)", "genres": ["Drama", "Thriller"]},
        {"item": "3953", "title": "Café Flesh (1982)", "genres": []},
    ]
    raw.validate()


def test_ml1m_ratings_file_source_and_crlf(tmp_path: Path) -> None:
    folder = _ml1m(tmp_path / "ml-1m", ratings=RATINGS_DAT.replace("\n", "\r\n"))
    raw = read_movielens_1m(folder / "ratings.dat")
    assert raw.interactions["timestamp"].tolist() == [978300760, 978302109, 978298413,
                                                      978224375]
    assert raw.interactions["item"].tolist() == ["1193", "661", "1193", "3952"]


def test_ml1m_missing_files(tmp_path: Path) -> None:
    folder = _ml1m(tmp_path / "ml-1m", movies=None)
    with pytest.raises(LlmesrError, match=r"movies\.dat"):
        read_movielens_1m(folder)
    with pytest.raises(LlmesrError, match=r"ratings\.dat"):
        read_movielens_1m(tmp_path)


@pytest.mark.parametrize("bad, message", [
    ("3::5::4", "expected 4 fields"),
    ("3::5::4::100::9", "expected 4 fields"),
    ("3:5::4::100", "expected 4 fields"),
    ("3::5::x::100", "rating 'x'"),
    ("3::5::4::soon", "timestamp 'soon'"),
    ("3\t::5::4::100", None),  # a tab: parsed line by line, the user id keeps it
])
def test_ml1m_malformed_rating_line(tmp_path: Path, bad: str, message: str | None) -> None:
    lines = RATINGS_DAT.splitlines()
    folder = _ml1m(tmp_path / "m", ratings="\n".join([*lines[:2], "", bad, *lines[2:]]) + "\n")
    if message is None:
        raw = read_movielens_1m(folder)
        assert raw.interactions["user"].tolist() == ["1", "1", "3\t", "2", "10"]
        assert raw.interactions["timestamp"].tolist() == [978300760, 978302109, 100, 978298413,
                                                          978224375]
        return
    with pytest.raises(DataFormatError) as exc:
        read_movielens_1m(folder)
    assert f"ratings.dat:4: {message}" in str(exc.value)


def test_ml1m_malformed_movie_line(tmp_path: Path) -> None:
    folder = _ml1m(tmp_path / "m", movies=MOVIES_DAT + "4000::No genres here\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat:7: expected 'MovieID::Title::Genres'"):
        read_movielens_1m(folder)
    folder = _ml1m(tmp_path / "m", movies=MOVIES_DAT + "1::Again::Drama\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat:7: movie id 1 appears again"):
        read_movielens_1m(folder)


@pytest.mark.parametrize("crlf", [False, True])
def test_valid_ratings_use_the_vectorised_path(tmp_path: Path, crlf: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import llmesr.data.readers.movielens as ml

    def no_slow_path(*args, **kwargs):
        raise AssertionError("fell back to the line-by-line parser")

    monkeypatch.setattr(ml, "_parse_ratings_slow", no_slow_path)
    nl = "\r\n" if crlf else "\n"
    raw = read_movielens_100k(_ml100k(tmp_path / "a", data=U_DATA.replace("\n", nl)))
    assert raw.interactions["timestamp"].tolist() == [881250949, 891717742, 878887116, 874965758]
    raw = read_movielens_1m(_ml1m(tmp_path / "b", ratings=RATINGS_DAT.replace("\n", nl)))
    assert raw.interactions["user"].tolist() == ["1", "1", "2", "10"]
