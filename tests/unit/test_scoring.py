import pytest

from personalens.errors import LLMOutputError
from personalens.llm import ScriptedChatModel, rating_choices, score_choices, score_rating


def test_whole_star_scale_takes_one_request():
    model = ScriptedChatModel(next_tokens=lambda r: {"5": 0.5, " 4": 0.3, "3": 0.1, "I": 0.1})
    scores = score_rating(model, "rate", (1, 5, 1), prefill='{"rating": ')
    assert len(model.calls) == 1
    assert model.calls[0].prefill == '{"rating": ' and model.calls[0].max_tokens == 1
    assert scores.mass == pytest.approx(0.9)
    assert scores.as_dict()["5"] == pytest.approx(0.5 / 0.9)
    assert scores.expectation == pytest.approx((5 * 0.5 + 4 * 0.3 + 3 * 0.1) / 0.9)
    assert scores.best == "5"


def test_half_star_scale_follows_multi_token_answers():
    table = {
        "": {"4": 0.6, "3": 0.3, "hello": 0.1},
        "4": {".": 0.5, "}": 0.3, "0": 0.2},  # "40" is not a rating: its mass is dropped
        "4.": {"5": 0.8, "0": 0.2},  # "4.0" is an alias of 4
        "3": {",": 1.0},
    }
    model = ScriptedChatModel(next_tokens=lambda r: table.get(r.prefill, {}))
    scores = score_rating(model, "rate", (0.5, 5, 0.5))
    got = {k: v * scores.mass for k, v in scores.as_dict().items() if v}
    assert got["4.5"] == pytest.approx(0.6 * 0.5 * 0.8)
    assert got["4"] == pytest.approx(0.6 * 0.3 + 0.6 * 0.5 * 0.2)
    assert got["3"] == pytest.approx(0.3)
    assert scores.mass == pytest.approx(0.24 + 0.24 + 0.3)
    assert sorted(c.prefill for c in model.calls) == ["", "3", "4", "4."]


def test_labels_and_delimited_tokens():
    model = ScriptedChatModel(next_tokens=lambda r: {"A)": 0.5, "B": 0.3, "Ca": 0.2})
    scores = score_choices(model, "pick", ["A", "B", "C"])
    assert scores.as_dict() == pytest.approx({"A": 0.5 / 0.8, "B": 0.3 / 0.8, "C": 0.0})
    assert scores.expectation is None


def test_low_mass_is_reported_with_the_models_preferences():
    model = ScriptedChatModel(next_tokens=lambda r: {"Sorry": 0.97, "5": 0.03})
    with pytest.raises(LLMOutputError, match="Sorry"):
        score_rating(model, "rate")


def test_rating_choices():
    assert rating_choices(1, 5, 1) == (["1", "2", "3", "4", "5"], [1, 2, 3, 4, 5], {})
    choices, values, aliases = rating_choices(0.5, 5, 0.5)
    assert choices[:3] == ["0.5", "1", "1.5"] and values[-1] == 5 and aliases["4.0"] == "4"
    assert rating_choices(0, 5, 1)[0][0] == "0"


def test_bad_arguments():
    model = ScriptedChatModel(next_tokens=lambda r: {"1": 1.0})
    with pytest.raises(ValueError):
        score_choices(model, "x", [])
    with pytest.raises(ValueError):
        score_choices(model, "x", ["a", "a"])
    with pytest.raises(ValueError):
        score_choices(model, "x", ["a"], aliases={"b": "c"})


def test_a_prefill_without_trailing_space_keeps_the_answers_leading_space_in_every_request():
    """BPE models put the space before a word inside the word's token (" comedy"): after "Answer:" the label
    tokens are natural, and multi-token labels are followed with that space kept ("Answer: dark", not
    "Answer:dark")."""
    table = {
        "Answer:": {" comedy": 0.5, " dark": 0.3, " Sorry": 0.2},
        "Answer: dark": {" comedy": 0.9, " horse": 0.1},
    }
    model = ScriptedChatModel(next_tokens=lambda r: table.get(r.prefill, {}))
    scores = score_choices(model, "tag?", ["comedy", "dark comedy", "action"], prefill="Answer:")
    got = {k: v * scores.mass for k, v in scores.as_dict().items()}
    assert got == pytest.approx({"comedy": 0.5, "dark comedy": 0.27, "action": 0.0})
    assert [c.prefill for c in model.calls] == ["Answer:", "Answer: dark"]


def test_a_whitespace_token_before_the_answer_is_followed_once():
    """Digits are split from the space before them (" " then "4"): after "Rating:" the space is its own token, so it
    is followed once to reach the digits; a second whitespace token is not followed."""
    table = {
        "Rating:": {" ": 0.8, "5": 0.1, "\n": 0.1},
        "Rating: ": {"4": 0.75, "5": 0.2, " ": 0.05},
        "Rating:\n": {"3": 1.0},
    }
    model = ScriptedChatModel(next_tokens=lambda r: table.get(r.prefill, {}))
    scores = score_rating(model, "rate", (1, 5, 1), prefill="Rating:")
    got = {k: v * scores.mass for k, v in scores.as_dict().items() if v}
    assert got == pytest.approx({"3": 0.1, "4": 0.6, "5": 0.1 + 0.16})
    assert sorted(c.prefill for c in model.calls) == ["Rating:", "Rating:\n", "Rating: "]
    # after a prefill that already ends in a space nothing changes: a whitespace token is not followed
    model = ScriptedChatModel(next_tokens=lambda r: table.get(r.prefill, {}))
    assert score_rating(model, "rate", (1, 5, 1), prefill="Rating: ").mass == pytest.approx(0.95)
    assert [c.prefill for c in model.calls] == ["Rating: "]
