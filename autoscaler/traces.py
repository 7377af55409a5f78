"""Request traces for the simulator: CSV loading, validation, and the two shipped examples.

A trace is a CSV file with the header ``arrival_s,prompt_tokens,completion_tokens`` and one row
per request: seconds since the start of the trace (a non-negative number, rows in arrival
order), prompt tokens (integer >= 1) and completion tokens (integer >= 0). Lines starting with
``#`` and blank lines are ignored (so a trace can carry a comment about where it comes from).
Every problem raises :class:`TraceError` naming the file and the line.

The shipped examples (``configs/traces/*.csv``) are generated deterministically by the
``generate_*`` functions below (seeded ``random.Random``, no other input):

- ``bursty-chat.csv`` (:func:`generate_bursty_chat`): 1 h of chat, five bursts, a quiet quarter;
- ``diurnal.csv`` (:func:`generate_diurnal`): 24 h of an office assistant, a smooth day curve;
- ``chat-day-bursts.csv`` (:func:`generate_chat_day_bursts`): 24 h of a public chat product, a
  day curve with an evening peak plus short bursts (a newsletter, a viral post, lunch);
- ``agent-tools.csv`` (:func:`generate_agent_tools`): 4 h of coding agents, sessions of 4-24
  steps with long, growing prompts, short tool-call completions and a tool round trip between
  steps, plus a CI job that starts 40 sessions at once.

``python -m autoscaler.traces --write`` rewrites them and a test checks that the committed files
equal a fresh generation.
"""

from __future__ import annotations

import csv
import io
import math
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import configs
from autoscaler.errors import AutoscalerError

COLUMNS = ("arrival_s", "prompt_tokens", "completion_tokens")
TRACES_DIR = configs.path("traces")
# Far beyond any real prompt or completion: a typo (an extra digit) is caught, not simulated.
MAX_TOKENS = 10_000_000
# A trace longer than a year is a unit mistake (milliseconds given as seconds).
MAX_ARRIVAL_S = 366 * 86400.0


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace."""

    arrival_s: float
    prompt_tokens: int
    completion_tokens: int


class TraceError(AutoscalerError, ValueError):
    """The trace file is invalid: ``line`` (1-based, None for the whole file) says where."""

    def __init__(self, message: str, *, line: int | None = None, source: str = "<trace>") -> None:
        self.line = line
        self.source = source
        self.reason = message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


def _int_field(name: str, raw: str, line: int, source: str, minimum: int) -> int:
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        raise TraceError(f"{name} must be an integer, got {raw!r}", line=line,
                         source=source) from None
    if not minimum <= value <= MAX_TOKENS:
        raise TraceError(f"{name} must be between {minimum} and {MAX_TOKENS}, got {value}",
                         line=line, source=source)
    return value


def parse_trace(text: str, source: str = "<trace>") -> list[TraceRequest]:
    """Parse and validate trace CSV text; raises :class:`TraceError` at the first problem."""
    rows: list[TraceRequest] = []
    header_seen = False
    previous = 0.0
    # csv.reader over lines keeps our own line numbers (quoted newlines are not allowed here).
    for lineno, raw_line in enumerate(io.StringIO(text), start=1):
        stripped = raw_line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = next(csv.reader([stripped]))
        if not header_seen:
            got = tuple(f.strip() for f in fields)
            if got != COLUMNS:
                raise TraceError(f"the header must be {','.join(COLUMNS)}, got {stripped!r}",
                                 line=lineno, source=source)
            header_seen = True
            continue
        if len(fields) != len(COLUMNS):
            raise TraceError(f"expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), "
                             f"got {len(fields)}", line=lineno, source=source)
        try:
            arrival = float(fields[0].strip())
        except ValueError:
            raise TraceError(f"arrival_s must be a number of seconds, got {fields[0]!r}",
                             line=lineno, source=source) from None
        if not math.isfinite(arrival) or arrival < 0 or arrival > MAX_ARRIVAL_S:
            raise TraceError(f"arrival_s must be between 0 and {MAX_ARRIVAL_S:.0f}, "
                             f"got {fields[0].strip()}", line=lineno, source=source)
        if arrival < previous:
            raise TraceError(f"arrival_s {arrival:g} is before the previous request's "
                             f"{previous:g} (rows must be in arrival order)",
                             line=lineno, source=source)
        previous = arrival
        prompt = _int_field("prompt_tokens", fields[1], lineno, source, 1)
        completion = _int_field("completion_tokens", fields[2], lineno, source, 0)
        rows.append(TraceRequest(arrival, prompt, completion))
    if not header_seen:
        raise TraceError(f"empty trace: expected the header {','.join(COLUMNS)}", source=source)
    if not rows:
        raise TraceError("the trace has a header but no requests", source=source)
    return rows


def load_trace(path: Path | str) -> list[TraceRequest]:
    """Read and validate a trace CSV file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError("no such file", source=str(p)) from None
    except UnicodeDecodeError:
        raise TraceError("not a UTF-8 text file", source=str(p)) from None
    return parse_trace(text, source=str(p))


def render_trace(requests: Iterable[TraceRequest], comment: str | None = None) -> str:
    """CSV text of a trace (arrival times with millisecond precision)."""
    out = io.StringIO()
    if comment:
        for line in comment.splitlines():
            out.write(f"# {line}\n".replace("# \n", "#\n"))
    out.write(",".join(COLUMNS) + "\n")
    for r in requests:
        out.write(f"{r.arrival_s:.3f},{r.prompt_tokens},{r.completion_tokens}\n")
    return out.getvalue()


# ---------------------------------------------------------------- the shipped examples


def _chat_tokens(rng: random.Random) -> tuple[int, int]:
    # Log-normal sizes: most chat turns are short, a few carry long context.
    prompt = int(min(3000, max(8, rng.lognormvariate(math.log(350), 0.8))))
    completion = int(min(1024, max(1, rng.lognormvariate(math.log(160), 0.7))))
    return prompt, completion


def _poisson(rng: random.Random, t0: float, t1: float, rate_at: object,
             peak: float) -> list[float]:
    """Arrivals of a non-homogeneous Poisson process on ``[t0, t1)`` by thinning."""
    out: list[float] = []
    t = t0
    while True:
        t += rng.expovariate(peak)
        if t >= t1:
            return out
        if rng.random() * peak < rate_at(t):  # type: ignore[operator]
            out.append(t)


def generate_bursty_chat(seed: int = 7) -> list[TraceRequest]:
    """One hour of chat traffic: a trickle, five bursts of 1-3 minutes at 4-9 requests/s, and a
    quiet quarter of an hour in the middle (long enough for scale-to-zero to matter)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible synthetic trace, not a secret
    bursts = [(300.0, 120.0, 6.0), (900.0, 60.0, 9.0), (1140.0, 180.0, 4.0),
              (2700.0, 90.0, 8.0), (3180.0, 150.0, 5.0)]

    def rate(t: float) -> float:
        if 1500.0 <= t < 2400.0:
            return 0.0  # the quiet quarter of an hour
        for start, length, r in bursts:
            if start <= t < start + length:
                return r
        return 0.15

    times = _poisson(rng, 0.0, 3600.0, rate, 9.0)
    return [TraceRequest(round(t, 3), *_chat_tokens(rng)) for t in times]


def generate_diurnal(seed: int = 11) -> list[TraceRequest]:
    """Twenty-four hours of an office assistant: near zero at night, a morning ramp, a lunch dip
    and an afternoon peak of about 0.8 requests/s (a smooth curve, Poisson arrivals)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible synthetic trace, not a secret

    def rate(t: float) -> float:
        h = (t / 3600.0) % 24
        day = math.exp(-((h - 10.5) / 2.2) ** 2) + 1.1 * math.exp(-((h - 15.5) / 2.4) ** 2)
        return 0.01 + 0.7 * day

    times = _poisson(rng, 0.0, 86400.0, rate, 0.85)
    return [TraceRequest(round(t, 3), *_chat_tokens(rng)) for t in times]


def generate_chat_day_bursts(seed: int = 23) -> list[TraceRequest]:
    """Twenty-four hours of a public chat product: low at night, a morning rise, a lunch bump
    and an evening peak (~0.9 requests/s), plus seven bursts of 2-6 minutes at 3-5 requests/s
    on top (a newsletter, a post going viral, the lunch rush). Chat-sized requests."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible synthetic trace, not a secret
    # (start hour, minutes, extra requests/s)
    bursts = [(8.25, 4.0, 3.0), (9.0, 2.0, 4.5), (12.5, 6.0, 3.0), (14.1, 3.0, 5.0),
              (18.0, 5.0, 4.0), (20.75, 2.0, 5.0), (21.5, 4.0, 3.5)]

    def rate(t: float) -> float:
        h = t / 3600.0
        day = (0.45 * math.exp(-((h - 10.0) / 2.0) ** 2) + 0.35 * math.exp(-((h - 13.0) / 1.0) ** 2)
               + 0.9 * math.exp(-((h - 20.0) / 2.5) ** 2))
        extra = sum(r for start, minutes, r in bursts if start <= h < start + minutes / 60.0)
        return 0.02 + day + extra

    times = _poisson(rng, 0.0, 86400.0, rate, 6.1)
    return [TraceRequest(round(t, 3), *_chat_tokens(rng)) for t in times]


AGENT_MAX_PROMPT = 7168


def _agent_session(rng: random.Random, start: float) -> list[TraceRequest]:
    """One agent session: a long system prompt + repository context, then steps whose prompt
    grows by the previous completion and the tool's output; the next step arrives when the
    model would have answered (at the simulator's default speeds) plus the tool's round trip."""
    steps = rng.randint(4, 24)
    prompt = int(min(AGENT_MAX_PROMPT, max(1500, rng.lognormvariate(math.log(3000), 0.4))))
    t = start
    out: list[TraceRequest] = []
    for _ in range(steps):
        completion = int(min(1024, max(8, rng.lognormvariate(math.log(90), 0.8))))
        out.append(TraceRequest(round(t, 3), prompt, completion))
        answer_s = prompt / 2000.0 + completion / 25.0
        tool_s = rng.lognormvariate(math.log(3.0), 1.0)  # a grep, a test run, a web fetch
        t += answer_s + min(120.0, tool_s)
        # The agent compacts its context at the window (an 8k model: 7k prompt + 1k answer).
        prompt = min(AGENT_MAX_PROMPT,
                     prompt + completion + int(rng.lognormvariate(math.log(600), 1.0)))
    return out


def generate_agent_tools(seed: int = 31) -> list[TraceRequest]:
    """Four hours of coding agents: sessions start at 0.02-0.12/s (a working-morning ramp and
    a plateau), each a chain of tool-calling steps (:func:`_agent_session`); at 2 h 30 a CI job
    starts 40 sessions within 20 seconds. Prompts are long (thousands of tokens, growing),
    completions short (tool calls)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible synthetic trace, not a secret

    def rate(t: float) -> float:
        h = t / 3600.0
        return 0.02 + 0.10 * min(1.0, h / 1.5) - (0.05 if 3.25 <= h < 3.5 else 0.0)

    starts = _poisson(rng, 0.0, 4 * 3600.0, rate, 0.12)
    starts += [9000.0 + rng.uniform(0.0, 20.0) for _ in range(40)]
    rows: list[TraceRequest] = []
    for s in sorted(starts):
        rows.extend(r for r in _agent_session(rng, s) if r.arrival_s < 4 * 3600.0)
    rows.sort(key=lambda r: r.arrival_s)
    return rows


EXAMPLES = {
    "bursty-chat.csv": (generate_bursty_chat,
                        "Synthetic: 1 h of chat, 5 bursts and a quiet quarter of an hour.\n"
                        "Generated by `python -m autoscaler.traces --write` (seed 7)."),
    "diurnal.csv": (generate_diurnal,
                    "Synthetic: 24 h of an office assistant (night, morning, lunch dip, "
                    "afternoon peak).\nGenerated by `python -m autoscaler.traces --write` "
                    "(seed 11)."),
    "chat-day-bursts.csv": (generate_chat_day_bursts,
                            "Synthetic: 24 h of a public chat product (night, morning, lunch, "
                            "evening peak) with 7 bursts of 2-6 min.\nGenerated by "
                            "`python -m autoscaler.traces --write` (seed 23)."),
    "agent-tools.csv": (generate_agent_tools,
                        "Synthetic: 4 h of coding agents: sessions of 4-24 tool-calling steps, "
                        "long growing prompts\n(compacted at 7k tokens), short completions, a tool "
                        "round trip between steps,\na CI job starting 40 sessions at 2 h 30.\n"
                        "Generated by `python -m autoscaler.traces --write` (seed 31)."),
}


def example_text(name: str) -> str:
    """The exact CSV text of a shipped example trace."""
    gen, comment = EXAMPLES[name]
    return render_trace(gen(), comment)


def write_examples(directory: Path = TRACES_DIR) -> list[Path]:
    """(Re)write the shipped example traces."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXAMPLES:
        path = directory / name
        path.write_text(example_text(name), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover - `python -m autoscaler.traces --write`
    if sys.argv[1:] == ["--write"]:
        for written in write_examples():
            print(f"wrote {written} ({len(load_trace(written))} requests)")
    else:
        sys.exit("usage: python -m autoscaler.traces --write")
