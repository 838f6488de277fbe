"""The bench entry points' argv: switches, integers, one-line errors."""

import pytest

from stepjax import bench_args

USAGE = "python -m stepjax.x.bench [ITERS] [--profile]"


def test_switches_and_numbers_are_split():
  given, numbers = bench_args.parse(
    ["3", "--profile", "1", "2"], ("--profile",), USAGE
  )
  assert given == {"--profile"} and numbers == [3, 1, 2]
  assert bench_args.parse([], ("--profile",), USAGE) == (set(), [])


@pytest.mark.parametrize(
  "argv, message",
  [
    (["abc"], "'abc' is not an integer >= 1"),
    (["0"], "'0' is not an integer >= 1"),
    (["--profil"], "unknown flag '--profil'"),
    (["3", "4"], "at most 1 number(s), got '4' too"),
  ],
)
def test_bad_input_is_one_line_with_the_usage(capsys, argv, message):
  with pytest.raises(SystemExit) as info:
    bench_args.parse(argv, ("--profile",), USAGE, max_numbers=1)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err == f"error: {message}; usage: {USAGE}\n"
