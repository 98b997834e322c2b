"""idc_ray.errors.first_line: the one line every `error:` exit and failure log shows."""

from idc_ray.errors import first_line


class Wrapped(Exception):
    """Like Ray's task errors: a printed traceback as message, the original error as ``cause``."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.cause = cause


def test_first_non_blank_line_or_the_type():
    assert first_line(ValueError("\n  bad value \nmore detail")) == "bad value"
    assert first_line(ValueError("bad value"), typed=True) == "ValueError: bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("x" * 500), 10) == "x" * 10


def test_the_cause_and_the_raised_line_of_a_printed_traceback():
    assert first_line(Wrapped("ray::task failed\nTraceback ...", OSError("disk full")), typed=True) == "OSError: disk full"
    printed = "\x1b[36mray::MatcherActor.step()\x1b[39m\nTraceback (most recent call last):\n  File ...\n" \
              "KeyError: 'a'\n\nThe above exception ...\nRuntimeError: injected fault"
    assert first_line(Wrapped(printed)) == "RuntimeError: injected fault"
