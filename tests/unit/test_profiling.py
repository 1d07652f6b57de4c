import pytest

from personalens.data.records import Item
from personalens.llm import ScriptedChatModel
from personalens.profiling import UNKNOWN_PROFILE, find_leaked_titles, reflect_profile, sample_negatives

SPACE = [Item("p1", "Alien (1979)"), Item("p2", "Aliens (1986)"), Item("p3", "Solaris (1972)")]
ROMANCE = [Item("n1", "Notting Hill (1999)"), Item("n2", "The Notebook (2004)")]


def _model(picks_space_once_learned=True):
    """Picks the first listed item while the profile is unknown; after any rewrite mentioning space, picks the
    space film wherever it is listed."""

    def next_tokens(request):
        text = request.messages[0].content
        profile = text.split("\n\n")[0]
        a_line = next(line for line in text.splitlines() if line.startswith("A: "))
        a_is_space = any(item.title in a_line for item in SPACE)
        if "space" in profile and picks_space_once_learned:
            return {"A": 0.9, "B": 0.1} if a_is_space else {"A": 0.1, "B": 0.9}
        return {"A": 0.6, "B": 0.4}

    rewrites = iter(
        [
            "Enjoys space horror and science fiction with tension; uninterested in romance.",
            "Enjoys space horror, science fiction and slow cerebral space drama; avoids romance.",
        ]
        * 5
    )
    return ScriptedChatModel(lambda request: next(rewrites), next_tokens=next_tokens)


def test_reflection_rewrites_until_the_choice_is_right():
    model = _model()
    persona, trace = reflect_profile(model, SPACE, ROMANCE, max_words=40, seed=1)
    assert "space" in persona.text
    # first pair: the unknown profile always triggers a rewrite; afterwards pairs are already right
    assert trace.steps[0].rewrites == 1 and trace.steps[0].p_positive_after == pytest.approx(0.9)
    assert all(step.rewrites == 0 for step in trace.steps[1:])
    assert [s.negative for s in trace.steps] == ["n1", "n2", "n1"]  # negatives cycle
    assert persona.source_items == ("p1", "p2", "p3")
    assert persona.usage.calls == len(model.calls)
    # the first choice prompt saw the unknown profile
    assert UNKNOWN_PROFILE in model.calls[0].messages[0].content


def test_reflection_gives_up_after_max_tries_and_reports_it():
    model = _model(picks_space_once_learned=False)
    _, trace = reflect_profile(model, SPACE[:1], ROMANCE, max_tries=2, seed=0)
    step = trace.steps[0]
    assert step.rewrites == 2  # bounded
    assert step.p_positive_after in (pytest.approx(0.6), pytest.approx(0.4))


def test_positions_are_shuffled_not_fixed():
    model = _model()
    reflect_profile(model, SPACE * 4, ROMANCE, seed=3)
    firsts = [
        next(line for line in c.messages[0].content.splitlines() if line.startswith("A: "))
        for c in model.calls
        if c.top_logprobs
    ]
    assert any("Alien" in f or "Solaris" in f for f in firsts)
    assert any("Notting" in f or "Notebook" in f for f in firsts)


def test_reflection_input_checks():
    with pytest.raises(ValueError):
        reflect_profile(_model(), [], ROMANCE)
    with pytest.raises(ValueError):
        reflect_profile(_model(), SPACE, [])


def test_negatives_prefer_own_dislikes_then_unseen_items():
    catalogue = {f"i{k}": Item(f"i{k}") for k in range(20)}
    negs = sample_negatives(["i1"], ["i2", "i3"], catalogue, seen={"i1", "i2", "i3"}, count=4, seed=0)
    assert set(negs[:2]) == {"i2", "i3"} and len(negs) == 4 and not set(negs[2:]) & {"i1", "i2", "i3"}
    assert negs == sample_negatives(["i1"], ["i2", "i3"], catalogue, seen={"i1", "i2", "i3"}, count=4, seed=0)


def test_leak_detection_uses_word_boundaries():
    assert find_leaked_titles("They like heated debates.", ["Heat (1995)"]) == ()
    assert find_leaked_titles("They loved Heat and Alien.", ["Heat (1995)", "Alien (1979)"]) == (
        "Heat (1995)",
        "Alien (1979)",
    )
