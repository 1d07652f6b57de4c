"""Behaviour data: typed records and loaders for common recommendation and personalisation formats.

Every loader validates as it reads and raises :class:`~personalens.errors.DataError` naming the file, the
1-based line (or row / JSON index) and the field. Loaders taking ``strict=False`` skip bad rows instead and
count them in a :class:`LoadReport` (``Dataset.meta["load_report"]`` or the ``report`` argument).
"""

from personalens.data._validate import LoadReport
from personalens.data.agent4rec import load_agent4rec
from personalens.data.deeper import (
    DEEPER_RATING_SCALES,
    DeeperRound,
    DeeperTrainUser,
    deeper_rating_scale,
    load_deeper_iterations,
    load_deeper_train_users,
)
from personalens.data.lamp import (
    LampExample,
    LampProfileEntry,
    LampTimeSplit,
    lamp_time_split,
    lamp_to_dataset,
    load_lamp,
)
from personalens.data.movielens import MOVIELENS_SCALES, detect_movielens, load_movielens
from personalens.data.personax import load_personax_csv
from personalens.data.recbole import load_recbole
from personalens.data.records import Dataset, History, Interaction, Item, Window, freeze_fields
from personalens.data.tabular import ColumnMap, infer_format, load_table

__all__ = [
    "DEEPER_RATING_SCALES",
    "MOVIELENS_SCALES",
    "ColumnMap",
    "Dataset",
    "DeeperRound",
    "DeeperTrainUser",
    "History",
    "Interaction",
    "Item",
    "LampExample",
    "LampProfileEntry",
    "LampTimeSplit",
    "LoadReport",
    "Window",
    "deeper_rating_scale",
    "detect_movielens",
    "freeze_fields",
    "infer_format",
    "lamp_time_split",
    "lamp_to_dataset",
    "load_agent4rec",
    "load_deeper_iterations",
    "load_deeper_train_users",
    "load_lamp",
    "load_movielens",
    "load_personax_csv",
    "load_recbole",
    "load_table",
]
