"""MovieLens loaders: latest-small / 20M-style CSV, 100K (``u.data``/``u.item``) and 1M (``*.dat``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from personalens.data._validate import (
    Deduper,
    LoadReport,
    check_scale,
    iter_csv_rows,
    iter_split_rows,
    parse_id,
    parse_rating,
    parse_timestamp,
    require_rows,
    skip_or_raise,
)
from personalens.data.records import Dataset, Interaction, Item, freeze_fields
from personalens.errors import DataError

MovieLensVariant = Literal["latest", "100k", "1m"]

#: The rating scale of each layout: half stars for latest-small/20M/25M, whole stars for 100K and 1M.
MOVIELENS_SCALES: dict[str, tuple[float, float, float]] = {
    "latest": (0.5, 5.0, 0.5),
    "100k": (1.0, 5.0, 1.0),
    "1m": (1.0, 5.0, 1.0),
}

#: The 19 genre flags of ``u.item`` (MovieLens 100K), in file order.
ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_NO_GENRES = {"(no genres listed)", "unknown", ""}
_FILES: dict[str, tuple[str, str]] = {
    "latest": ("ratings.csv", "movies.csv"),
    "100k": ("u.data", "u.item"),
    "1m": ("ratings.dat", "movies.dat"),
}


def detect_movielens(directory: str | Path) -> MovieLensVariant:
    """Which MovieLens layout ``directory`` holds: ``"latest"`` (``ratings.csv``), ``"100k"`` (``u.data``)
    or ``"1m"`` (``ratings.dat``). Checked in that order; both files of the pair must exist."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("MovieLens directory not found", path=directory)
    for variant, (ratings, movies) in _FILES.items():
        if (directory / ratings).is_file() or (directory / movies).is_file():
            for needed in (ratings, movies):
                if not (directory / needed).is_file():
                    raise DataError(
                        f"found the other file of the {variant} layout but not {needed}",
                        path=directory / needed,
                    )
            return variant  # type: ignore[return-value]
    present = sorted(p.name for p in directory.iterdir())[:20]
    raise DataError(
        "no MovieLens files: expected ratings.csv + movies.csv, u.data + u.item or ratings.dat + movies.dat; "
        f"found {present}",
        path=directory,
    )


def load_movielens(
    directory: str | Path,
    *,
    variant: MovieLensVariant | None = None,
    strict: bool = True,
    on_duplicate: Literal["error", "drop", "keep"] = "error",
    name: str | None = None,
) -> Dataset:
    """Load a MovieLens directory, detecting the layout unless ``variant`` is given.

    Items carry the title and ``fields["genres"]`` (``"Action, Sci-Fi"``; "(no genres listed)" and 100K's
    "unknown" flag give no genres). 100K and 1M files are decoded as latin-1, as GroupLens ships them.

    A rating whose movie is not in the movies file fails with ``strict=True``; with ``strict=False`` it is
    skipped, like any other bad row, and counted in ``meta["load_report"]``. Exact duplicate rating lines fail
    unless ``on_duplicate`` is ``"drop"`` or ``"keep"``; a movie rated again at another time is kept.
    """
    directory = Path(directory)
    found = variant or detect_movielens(directory)
    if found not in _FILES:
        raise ValueError(f"variant must be one of {sorted(_FILES)}, not {found!r}")
    scale = check_scale(MOVIELENS_SCALES[found])
    ratings_name, movies_name = _FILES[found]
    ratings_path, movies_path = directory / ratings_name, directory / movies_name
    report = LoadReport()
    if found == "latest":
        movies = _latest_movies(movies_path, strict, report)
        ratings = iter_csv_rows(
            ratings_path, required=("userId", "movieId", "rating", "timestamp"), strict=strict, report=report
        )
        user_col, item_col = "userId", "movieId"
    elif found == "100k":
        movies = _ml100k_movies(movies_path, strict, report)
        ratings = iter_split_rows(
            ratings_path,
            separator="\t",
            names=("user", "item", "rating", "timestamp"),
            encoding="latin-1",
            strict=strict,
            report=report,
        )
        user_col, item_col = "user", "item"
    else:
        movies = _ml1m_movies(movies_path, strict, report)
        ratings = iter_split_rows(
            ratings_path,
            separator="::",
            names=("UserID", "MovieID", "Rating", "Timestamp"),
            encoding="latin-1",
            strict=strict,
            report=report,
        )
        user_col, item_col = "UserID", "MovieID"
    rating_col, time_col = ("rating", "timestamp") if found != "1m" else ("Rating", "Timestamp")
    deduper = Deduper(on_duplicate, report)
    interactions: list[Interaction] = []
    for line, row in ratings:
        if not deduper.keep((row[user_col], row[item_col], row[rating_col], row[time_col]), ratings_path, line):
            continue
        try:
            user = parse_id(row[user_col], ratings_path, line, user_col)
            item = parse_id(row[item_col], ratings_path, line, item_col)
            rating = parse_rating(row[rating_col], scale, ratings_path, line, rating_col)
            timestamp = parse_timestamp(row[time_col], ratings_path, line, time_col)
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        if item not in movies:
            problem = DataError(
                f"movie {item!r} is not in {movies_name} (pass strict=False to skip such ratings)",
                path=ratings_path,
                line=line,
                field=item_col,
            )
            skip_or_raise(problem, strict=strict, report=report, kind="unknown_item")
            continue
        interactions.append(Interaction(user, item, rating, None, timestamp))
    require_rows(len(interactions), ratings_path, "ratings")
    meta = {"source": str(directory), "format": f"movielens-{found}", "variant": found, "load_report": report}
    return Dataset(name or directory.name, movies, interactions, scale, meta)


def _genres(names: list[str]) -> str:
    return ", ".join(g for g in (n.strip() for n in names) if g not in _NO_GENRES)


def _add_movie(
    movies: dict[str, Item],
    movie_id: str,
    title: str,
    genres: str,
    path: Path,
    line: int,
    first_line: dict[str, int],
    field: str,
    strict: bool,
    report: LoadReport,
) -> None:
    if movie_id in movies:
        error = DataError(
            f"duplicate movie id {movie_id!r} (first at line {first_line[movie_id]})",
            path=path,
            line=line,
            field=field,
        )
        skip_or_raise(error, strict=strict, report=report, kind="duplicate_item")
        return
    first_line[movie_id] = line
    movies[movie_id] = Item(movie_id, title.strip(), freeze_fields([("genres", genres)]))


def _load_movies(
    rows: Iterator[tuple[int, dict[str, str]]],
    path: Path,
    id_col: str,
    title_col: str,
    genres_of: Callable[[dict[str, str], int], str],
    strict: bool,
    report: LoadReport,
) -> dict[str, Item]:
    movies: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        try:
            movie_id = parse_id(row[id_col], path, line, id_col)
            genres = genres_of(row, line)
        except DataError as error:
            skip_or_raise(error, strict=strict, report=report)
            continue
        _add_movie(movies, movie_id, row[title_col], genres, path, line, first_line, id_col, strict, report)
    require_rows(len(movies), path, "movies")
    return movies


def _latest_movies(path: Path, strict: bool, report: LoadReport) -> dict[str, Item]:
    rows = iter_csv_rows(path, required=("movieId", "title", "genres"), strict=strict, report=report)
    return _load_movies(
        rows, path, "movieId", "title", lambda row, line: _genres(row["genres"].split("|")), strict, report
    )


def _ml1m_movies(path: Path, strict: bool, report: LoadReport) -> dict[str, Item]:
    rows = iter_split_rows(
        path,
        separator="::",
        names=("MovieID", "Title", "Genres"),
        encoding="latin-1",
        strict=strict,
        report=report,
    )
    return _load_movies(
        rows, path, "MovieID", "Title", lambda row, line: _genres(row["Genres"].split("|")), strict, report
    )


_ML100K_COLUMNS = (
    "movie id",
    "movie title",
    "release date",
    "video release date",
    "IMDb URL",
    *ML100K_GENRES,
)


def _ml100k_movies(path: Path, strict: bool, report: LoadReport) -> dict[str, Item]:
    rows = iter_split_rows(path, separator="|", names=_ML100K_COLUMNS, encoding="latin-1", strict=strict, report=report)

    def genres_of(row: dict[str, str], line: int) -> str:
        names = []
        for genre in ML100K_GENRES:
            flag = row[genre].strip()
            if flag not in ("0", "1"):
                raise DataError(f"genre flag must be 0 or 1, not {flag!r}", path=path, line=line, field=genre)
            if flag == "1":
                names.append(genre)
        return _genres(names)

    return _load_movies(rows, path, "movie id", "movie title", genres_of, strict, report)
