import pytest

from personalens.errors import LLMOutputError
from personalens.llm import ScriptedChatModel, generate_json
from personalens.llm.structured import backend_schema, extract_json, validate

SCHEMA = {
    "type": "object",
    "properties": {
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string", "maxLength": 40},
    },
    "required": ["rating", "reason"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": [1, 2,]}\n```', {"a": [1, 2]}),
        ('Sure! Here it is: {"a": "b}"} Hope that helps.', {"a": "b}"}),
        ("[1, 2, 3]", [1, 2, 3]),
        ('Answer:\n```\n{"x": {"y": true}}\n```', {"x": {"y": True}}),
    ],
)
def test_extract_json_tolerates_common_wrappers(text, expected):
    assert extract_json(text) == expected


def test_extract_json_names_the_problem():
    with pytest.raises(ValueError, match="not valid JSON"):
        extract_json("I cannot do that.")
    with pytest.raises(ValueError, match="not valid JSON"):
        extract_json('{"a": ')


def test_validate_reports_paths():
    problems = validate({"rating": 9, "reason": "x" * 50, "extra": 1}, SCHEMA)
    assert "$.rating: 9 > maximum 5" in problems
    assert "$.reason: longer than 40 characters" in problems
    assert "$: unexpected field 'extra'" in problems
    assert validate({"rating": 3}, SCHEMA) == ["$: missing required field 'reason'"]
    assert validate(True, {"type": "integer"}) == ["$: expected integer, got bool"]
    items = {"type": "array", "prefixItems": [{"const": "a"}, {"const": "b"}], "minItems": 2, "maxItems": 2}
    assert validate(["a", "b"], items) == []
    assert validate(["a", "c", "d"], items) == ["$: more than 2 items", "$[1]: must be 'b'"]


def test_backend_schema_turns_small_integer_ranges_into_enums():
    converted = backend_schema(SCHEMA)
    assert converted["properties"]["rating"]["enum"] == [1, 2, 3, 4, 5]
    assert "enum" not in SCHEMA["properties"]["rating"]  # the caller's schema is untouched


def test_generate_json_reasks_with_the_error_and_succeeds():
    model = ScriptedChatModel(['{"rating": 7, "reason": "great"}', "oops", '{"rating": 4, "reason": "fine"}'])
    answer = generate_json(model, "Rate it.", SCHEMA)
    assert answer.value == {"rating": 4, "reason": "fine"}
    assert answer.attempts == 3 and len(answer.raw) == 3
    first, second = model.calls[0], model.calls[1]
    assert first.json_schema["properties"]["rating"]["enum"] == [1, 2, 3, 4, 5]
    assert second.messages[-2].content == '{"rating": 7, "reason": "great"}'
    assert "7 > maximum 5" in second.messages[-1].content
    assert answer.usage.calls == 3


def test_generate_json_gives_up_with_every_raw_answer():
    model = ScriptedChatModel(["no", "still no"])
    with pytest.raises(LLMOutputError) as info:
        generate_json(model, "Rate it.", SCHEMA, max_attempts=2)
    assert info.value.raw == ["no", "still no"]
