"""Helpers for medrl plugins written in Python (componentize-py), plugin API 0.3.0.

The Python counterpart of the Rust SDK's glue (reward-sdk/src/batch.rs): it slices the host's
sample batch (one string plus byte offsets) into samples, builds the flat `batch-scores`
record, reads the JSON config, and turns a tool's Python function into the `tool` world's
`call`. With it a reward or a tool is a function plus a few lines of `app.py`:

    import wit_world, medrl_sdk

    def score(config, sample):            # -> (score, {"part": value}), NOT_APPLICABLE, or raise
        ...

    class WitWorld(wit_world.WitWorld):
        def manifest(self):
            return medrl_sdk.manifest("my-reward", "0.1.0", "What it rewards")
        def score_batch(self, config, batch):
            return medrl_sdk.score_batch(config, batch, score)

scripts/build-python-plugin.sh puts this file on the component's module path; copy it next to
your `app.py` if you build another way. It only needs the standard library, and it also runs in
plain CPython (without the generated `wit_world` bindings it uses stand-in records with the same
fields), so rewards and tools can be unit-tested with `python -m unittest`
(plugins/python/test_medrl_sdk.py).
"""
import json
from dataclasses import dataclass
from enum import Enum
from typing import List, Tuple

API_VERSION = "0.3.0"
FIELDS = 5  # prompt, response, ground_truth, metadata, data_source

try:  # inside a component built by componentize-py
    from componentize_py_types import Err
    from wit_world.imports import host as _host
    from wit_world.imports import types
except ImportError:  # plain CPython (unit tests): stand-ins with the generated records' fields
    _host = None

    @dataclass(frozen=True)
    class Err(Exception):
        value: str

    class types:  # noqa: N801 - mirrors the generated module
        class Capability(Enum):
            JUDGE = 0
            SEARCH = 1

        @dataclass
        class Manifest:
            name: str
            version: str
            description: str
            config_schema: str
            capabilities: list
            api_version: str

        @dataclass
        class SampleBatch:
            text: str
            offsets: List[int]

        @dataclass
        class BatchScores:
            scores: List[float]
            component_names: List[str]
            components: List[float]
            absent: List[int]
            errors: List[Tuple[int, str]]
            not_applicable: List[int]

        @dataclass
        class ToolSpec:
            name: str
            description: str
            parameters: str


# ---------------------------------------------------------------------------------------------
# Common


def manifest(name, version, description, config_schema=None, capabilities=()):
    """The plugin's manifest; `config_schema` is a dict (JSON Schema of the config) or None,
    `capabilities` names ("judge", "search") or `types.Capability` values."""
    caps = [c if isinstance(c, types.Capability) else types.Capability[c.upper()] for c in capabilities]
    return types.Manifest(
        name=name,
        version=version,
        description=description,
        config_schema=json.dumps(config_schema if config_schema is not None else {}),
        capabilities=caps,
        api_version=API_VERSION,
    )


def parse_config(text):
    """The run's config as a dict ("" counts as {}); ValueError when it is not a JSON object."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"config must be a JSON object, got {type(value).__name__}")
    return value


def parse_json(text):
    """A JSON field (ground truth, metadata) as a value; text that is not JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def log(level, message):
    """Write a line to medrl's log ("trace", "debug", "info", "warn", "error"); counts toward the
    plugin's log budget. `print()` works too. Outside a component it prints."""
    if _host is None:
        print(f"[{level}] {message}")
    else:
        _host.log(_host.LogLevel[level.upper()], message)


# ---------------------------------------------------------------------------------------------
# Rewards


class Sample:
    """One sample of a batch. `ground_truth` and `metadata` are JSON text (`parse_json` them, or
    use the `gt` / `meta` properties, which parse on first use)."""

    __slots__ = ("prompt", "response", "ground_truth", "metadata", "data_source", "_gt", "_meta")

    def __init__(self, prompt, response, ground_truth, metadata, data_source):
        self.prompt = prompt
        self.response = response
        self.ground_truth = ground_truth
        self.metadata = metadata
        self.data_source = data_source
        self._gt = self._meta = _UNSET

    @property
    def gt(self):
        if self._gt is _UNSET:
            self._gt = parse_json(self.ground_truth)
        return self._gt

    @property
    def meta(self):
        if self._meta is _UNSET:
            self._meta = parse_json(self.metadata)
        return self._meta

    def __repr__(self):
        return (f"Sample(prompt={self.prompt!r}, response={self.response!r}, ground_truth={self.ground_truth!r}, "
                f"metadata={self.metadata!r}, data_source={self.data_source!r})")


_UNSET = object()


def sample_count(batch):
    """How many samples the batch claims to hold (also when its layout is invalid)."""
    return max(len(batch.offsets) - 1, 0) // FIELDS


def samples(batch):
    """The batch's samples, in order. ValueError when the layout breaks the WIT's rules.

    The offsets are UTF-8 byte offsets and a Python str is indexed by code point: an ASCII batch
    (the common case; `str.isascii` is a flag check) is sliced directly, any other is encoded
    once and each field decoded from the bytes."""
    text, offsets = batch.text, batch.offsets
    if len(offsets) % FIELDS != 1:
        raise ValueError(f"malformed batch: {len(offsets)} offsets (expected 5 per sample + 1)")
    ascii_text = text.isascii()
    data = text if ascii_text else text.encode("utf-8")
    if offsets[0] != 0 or offsets[-1] != len(data):
        raise ValueError(f"malformed batch: offsets run from {offsets[0]} to {offsets[-1]}, text is {len(data)} bytes")
    out = []
    for i in range(0, len(offsets) - 1, FIELDS):
        o = offsets[i:i + FIELDS + 1]
        for a, b in zip(o, o[1:]):
            if b < a:
                raise ValueError(f"malformed batch: offsets decrease at sample {i // FIELDS} ({a} > {b})")
        if ascii_text:
            fields = [text[a:b] for a, b in zip(o, o[1:])]
        else:
            try:
                fields = [data[a:b].decode("utf-8") for a, b in zip(o, o[1:])]
            except UnicodeDecodeError:
                raise ValueError(f"malformed batch: an offset of sample {i // FIELDS} is inside a UTF-8 character") from None
        out.append(Sample(*fields))
    return out


NOT_APPLICABLE = object()
"""Return this from a reward function for a sample that is not the plugin's business."""


class BatchBuilder:
    """Collects per-sample results and builds the flat `batch-scores` record: component names
    once (in order of first appearance), `absent` for samples without some of them, `errors`
    and `not-applicable` by index, 0 written for those samples' scores."""

    def __init__(self):
        self._rows = []  # (score, components dict) | ("error", msg) | NOT_APPLICABLE
        self._names = {}

    def scored(self, score, components=None):
        comps = dict(components or {})
        for name in comps:
            self._names.setdefault(name, len(self._names))
        self._rows.append((float(score), comps))

    def error(self, message):
        self._rows.append(("error", str(message)))

    def not_applicable(self):
        self._rows.append(NOT_APPLICABLE)

    def build(self):
        names = list(self._names)
        scores, components, absent, errors, na = [], [], [], [], []
        for i, row in enumerate(self._rows):
            if row is NOT_APPLICABLE or row[0] == "error":
                if row is NOT_APPLICABLE:
                    na.append(i)
                else:
                    errors.append((i, row[1]))
                scores.append(0.0)
                components.extend([0.0] * len(names))
                continue
            score, comps = row
            scores.append(score)
            for j, name in enumerate(names):
                if name in comps:
                    components.append(float(comps[name]))
                else:
                    components.append(0.0)
                    absent.append(i * len(names) + j)
        return types.BatchScores(scores=scores, component_names=names, components=components,
                                 absent=absent, errors=errors, not_applicable=na)


def score_batch(config, batch, score, parse=None):
    """The whole `score-batch` export: `score(cfg, sample)` is called once per sample with the
    parsed config (or, with `parse`, with `parse(cfg)` computed once per call, e.g. a tuple of
    settings read from it) and returns `(score, {"component": value, ...})`, a bare score, or
    `NOT_APPLICABLE`. An exception fails only its sample (its message becomes the sample's
    error); an invalid config or a malformed batch fails every sample with the same message."""
    out = BatchBuilder()
    try:
        cfg = parse_config(config)
        if parse is not None:
            try:
                cfg = parse(cfg)
            except Exception as e:  # a bad setting fails the call's samples, not the instance
                raise ValueError(f"bad config: {type(e).__name__}: {e}") from None
        batch_samples = samples(batch)
    except ValueError as e:
        for _ in range(sample_count(batch)):
            out.error(str(e))
        return out.build()
    for s in batch_samples:
        try:
            r = score(cfg, s)
        except Exception as e:  # a bug in one sample must not fail the batch
            out.error(f"{type(e).__name__}: {e}")
            continue
        if r is NOT_APPLICABLE:
            out.not_applicable()
        elif isinstance(r, tuple):
            out.scored(r[0], r[1])
        else:
            out.scored(r)
    return out.build()


# ---------------------------------------------------------------------------------------------
# Tools


class ToolError(Exception):
    """Raise from a tool function for a reply the model should read as an error (bad arguments,
    nothing found): it becomes the call's `err`. Any other exception is a bug in the plugin and
    traps (a plugin failure, handled by the run's `on_failure` for the tool)."""


def tool_spec(name, description, parameters):
    """The tool's spec; `parameters` is the JSON Schema (a dict) of its arguments object."""
    return types.ToolSpec(name=name, description=description, parameters=json.dumps(parameters))


def tool_call(config, arguments, call):
    """The whole `call` export: parses `config` and `arguments` (both JSON objects) and returns
    `call(cfg, args)`, which must be a str (the reply); a `ToolError` (or a config/arguments
    that do not parse) raises `Err(message)`, which componentize-py returns as the `err` case."""
    try:
        cfg = parse_config(config)
    except ValueError as e:
        raise Err(str(e)) from None
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except ValueError as e:
        raise Err(f"arguments are not valid JSON: {e}") from None
    if not isinstance(args, dict):
        raise Err(f"arguments must be a JSON object, got {type(args).__name__}")
    try:
        reply = call(cfg, args)
    except ToolError as e:
        raise Err(str(e)) from None
    if not isinstance(reply, str):
        raise TypeError(f"a tool must reply with a str, got {type(reply).__name__}")
    return reply


# Argument readers for tools: each returns the value or raises ToolError saying what to fix.


def number(args, key, lo=None, hi=None, default=_UNSET):
    """args[key] as a float (an int or float, not a bool or string), within [lo, hi] if given."""
    if key not in args or args[key] is None:
        if default is _UNSET:
            raise ToolError(f"{key} is required")
        return default
    v = args[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ToolError(f"{key} must be a number, got {json.dumps(v)}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ToolError(f"{key} must be a finite number")
    _check_range(key, v, lo, hi)
    return v


def integer(args, key, lo=None, hi=None, default=_UNSET):
    """args[key] as an int (a JSON integer; 2.0 counts, 2.5 and "2" do not), within [lo, hi]."""
    if key not in args or args[key] is None:
        if default is _UNSET:
            raise ToolError(f"{key} is required")
        return default
    v = args[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ToolError(f"{key} must be an integer, got {json.dumps(v)}")
    _check_range(key, v, lo, hi)
    return v


def choice(args, key, options, default=_UNSET):
    """args[key] as one of `options` (strings)."""
    if key not in args or args[key] is None:
        if default is _UNSET:
            raise ToolError(f"{key} is required (one of {', '.join(options)})")
        return default
    v = args[key]
    if v not in options:
        raise ToolError(f"{key} must be one of {', '.join(options)}, got {json.dumps(v)}")
    return v


def _check_range(key, v, lo, hi):
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if lo is not None and hi is not None:
            want = f"from {_num(lo)} to {_num(hi)}"
        else:
            want = f"at least {_num(lo)}" if lo is not None else f"at most {_num(hi)}"
        raise ToolError(f"{key} must be {want}, got {_num(v)}")


def _num(v):
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
