"""gapt_ds.runtime: how errors reach the user, and the environment set before DeepSpeed starts."""

import json

from gapt_ds.data.arithmetic import parse_range
from gapt_ds.runtime import run_main


def test_user_mistake_is_one_line(capsys):
    def main(argv):
        parse_range("3-1")  # a gapt-ds check

    assert run_main("gapt-ds train", main, []) == 2
    assert capsys.readouterr().err == "gapt-ds train: error: digit range '3-1': need 1 <= A <= B\n"


def test_value_error_from_a_dependency_says_where_with_the_traceback(capsys):
    def main(argv):
        json.loads("{not json")  # json.JSONDecodeError is a ValueError raised outside gapt-ds

    assert run_main("gapt-ds train", main, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("gapt-ds train: error: Expecting property name")
    assert "raised inside " in err and "json" in err and "not by a gapt-ds check" in err
    assert "Traceback (most recent call last)" in err and "in main" in err
