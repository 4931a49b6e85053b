from simvg.benchmark import take_turns


def test_calls_take_turns_one_call_at_a_time():
    order = []
    times = take_turns({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, seconds=0.0, min_calls=3)
    assert order == ["a", "b"] * 4  # a warm-up call each, then three rounds
    assert {key: len(t) for key, t in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for t in times["a"] + times["b"])
