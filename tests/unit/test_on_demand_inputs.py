"""Which inputs an on-demand view's body reads: only provable ones prune its reads."""

from __future__ import annotations

import pytest

from serving.repo.compile import subscripted_inputs


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "def f(inputs):\n    df = pd.DataFrame()\n"
            "    df['a'] = inputs['conv_rate'] + inputs['val']\n    return df\n",
            ("conv_rate", "val"),
        ),
        ("@on_demand_feature_view(sources=[x])\ndef f(x):\n    return {'y': x['b']}\n", ("b",)),
        ("def f(inputs):\n    return helper(inputs)\n", None),  # passed on: anything
        ("def f(inputs):\n    return {'n': len(inputs['a']), 'k': list(inputs)}\n", None),
        ("def f(inputs):\n    return inputs.assign(y=1)\n", None),
        ("def f(inputs):\n    key = 'a'\n    return {'y': inputs[key]}\n", None),
        ("def f():\n    return {}\n", None),
        ("def f(inputs) return", None),  # not Python
    ],
)
def test_only_constant_subscripts_prune(source: str, expected: tuple[str, ...] | None) -> None:
    assert subscripted_inputs(source, "f") == expected
