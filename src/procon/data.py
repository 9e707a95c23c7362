"""Loaders for instruction data: prompt lists, prompt/response pairs and task examples.

Supported inputs are local .csv, .tsv, .json, .jsonl and .txt files, and Hugging Face Hub
dataset ids when the `datasets` package is installed. Every problem with the input raises
`InputError` with a one-line message that names the file, the line, item or row, and the
field at fault.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from procon.errors import InputError
from procon.io import atomic_write_text

# Candidate column names, in priority order, used when the caller names no field.
# Names match case-insensitively, so HarmBench's "Behavior" and JailbreakBench's "Goal"
# both resolve. "goal" precedes "behavior" because JailbreakBench files contain both, and
# there "behavior" is a short category label. "instructions" is the column name in the
# column-oriented safety-tuned-llamas evaluation files.
PROMPT_FIELDS = (
    "instruction",
    "prompt",
    "goal",
    "behavior",
    "question",
    "query",
    "text",
    "sentence",
    "instructions",
)
RESPONSE_FIELDS = ("output", "response", "target", "answer", "completion", "refusal")
ANSWER_FIELDS = ("answer", "label", "output", "response", "target", "completion")

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt")
_SUPPORTED_TEXT = ".csv, .tsv, .json, .jsonl or .txt"

# A name with one of these suffixes is taken as a local path, never as a Hub dataset id.
_FILE_SUFFIXES = frozenset(
    SUPPORTED_SUFFIXES
    + (".parquet", ".arrow", ".xlsx", ".xls", ".gz", ".zip", ".bz2", ".xz", ".yaml", ".yml")
)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class Record(dict[str, Any]):
    """One example as a field-to-value dict, plus its `location` for error messages.

    The location is "line N" for csv, tsv, jsonl and txt files (the line where the row
    starts), "item N" for .json files (1-based position in the list) and "row N" for Hub
    datasets. Keeping it as an attribute leaves the fields themselves untouched.
    """

    __slots__ = ("location",)

    def __init__(self, fields: Iterable[tuple[str, Any]] | Mapping[str, Any], location: str):
        super().__init__(fields)
        self.location = location


# ---------------------------------------------------------------------------
# Reading raw records


def read_records(source: str, split: str | None = None) -> list[Record]:
    """Read all rows of a data file, or of a Hugging Face Hub dataset.

    Local files: .csv and .tsv with a header row, .json (a list of objects or strings, or
    an object containing the list), .jsonl (one object or string per line) and .txt (one
    {"text": line} per non-blank line). A JSON string becomes {"text": string}. When
    `source` is not an existing path but looks like a Hub id ("owner/name" or "name"),
    it is loaded with `datasets.load_dataset(source, split=split or "train")`.
    `split` applies to Hub datasets only.
    """
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{source}: is a directory; expected a {_SUPPORTED_TEXT} file")
    if path.is_file():
        if split is not None:
            raise InputError(f"{source}: split '{split}' applies only to Hub datasets, not to local files")
        return _read_file(path, str(source))
    if not _looks_like_hub_id(str(source)):
        raise InputError(f"{source}: file not found")
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{source}: file not found (to load it as a Hugging Face Hub dataset, install the 'datasets' package)"
        ) from None
    return _read_hub(datasets, str(source), split or "train")


def _looks_like_hub_id(source: str) -> bool:
    if _HUB_ID.fullmatch(source) is None:
        return False
    return Path(source).suffix.lower() not in _FILE_SUFFIXES


def _read_hub(datasets: Any, source: str, split: str) -> list[Record]:
    try:
        dataset = datasets.load_dataset(source, split=split)
    except (OSError, ValueError) as exc:
        # datasets raises ConnectionError or DatasetNotFoundError (both OSError) for an
        # unreachable or unknown id, and ValueError for an unknown split.
        reason = " ".join(str(exc).split())
        raise InputError(
            f"{source}: file not found, and loading it as a Hugging Face Hub dataset (split '{split}') failed: {reason}"
        ) from None
    return [Record(row, f"row {number}") for number, row in enumerate(dataset, 1)]


def _read_file(path: Path, name: str) -> list[Record]:
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[str, str], list[Record]]] = {
        ".csv": _parse_csv,
        ".tsv": _parse_tsv,
        ".json": _parse_json,
        ".jsonl": _parse_jsonl,
        ".txt": _parse_txt,
    }
    reader = readers.get(suffix)
    if reader is None:
        problem = f"unsupported file type '{suffix}'" if suffix else "no file extension"
        raise InputError(f"{name}: {problem}; expected {_SUPPORTED_TEXT}")
    return reader(_read_text(path, name), name)


def _read_text(path: Path, name: str) -> str:
    """Read UTF-8 text without its byte order mark. Newlines come back normalised to \\n."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: invalid UTF-8 at byte {exc.start}; expected UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{name}: reading the file failed ({exc.strerror})") from None


def _parse_csv(text: str, name: str) -> list[Record]:
    return _parse_delimited(csv.reader(io.StringIO(text)), name)


def _parse_tsv(text: str, name: str) -> list[Record]:
    # Fields are taken literally, without quote handling, as GLUE-style .tsv files
    # (for example SST-2) contain bare '"' characters inside sentences.
    return _parse_delimited(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE), name)


def _parse_delimited(reader: Any, name: str) -> list[Record]:
    """Turn csv.reader rows into records keyed by the header row.

    Blank rows, including rows whose fields are all blank (as spreadsheets export), are
    skipped. A quoted field may span several lines, so the location is the first line of
    the row, computed from the reader's line count after the previous row.
    """
    header: list[str] | None = None
    records: list[Record] = []
    end_line = 0
    try:
        for values in reader:
            start_line = end_line + 1
            end_line = reader.line_num
            if all(not value.strip() for value in values):
                continue
            if header is None:
                header = _check_header(values, name, start_line)
                continue
            if len(values) != len(header):
                raise InputError(
                    f"{name}: line {start_line}: found {len(values)} fields; expected {len(header)} as in the header"
                )
            records.append(Record(zip(header, values), f"line {start_line}"))
    except csv.Error as exc:
        raise InputError(f"{name}: line {reader.line_num}: invalid CSV ({exc})") from None
    return records


def _check_header(values: list[str], name: str, line: int) -> list[str]:
    header = [value.strip() for value in values]
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise InputError(f"{name}: line {line}: duplicate column name '{column}' in the header")
        seen.add(column)
    return header


def _parse_json(text: str, name: str) -> list[Record]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if exc.msg == "Extra data":
            hint = "; the file looks like JSON Lines, so give it the .jsonl extension"
        raise InputError(f"{name}: line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}){hint}") from None
    except RecursionError:
        raise InputError(f"{name}: invalid JSON (nested too deeply); expected a list of examples") from None

    if isinstance(data, dict):
        return _unwrap_object(data, name)
    if isinstance(data, list):
        return [_to_record(item, name, f"item {number}") for number, item in enumerate(data, 1)]
    raise InputError(
        f"{name}: found a JSON {_json_type(data)}; expected a list of examples or an object containing one list"
    )


def _unwrap_object(data: dict[str, Any], name: str) -> list[Record]:
    """Find the examples inside a top-level JSON object.

    Accepted shapes: one non-empty list-valued key, such as {"data": [...]} or
    {"instances": [...]}, or several non-empty lists of scalars with equal lengths, which
    are read as columns (the layout of pandas `to_dict(orient="list")`). Empty lists and
    non-list values are ignored.
    """
    list_keys = [key for key, value in data.items() if isinstance(value, list)]
    if not list_keys:
        raise InputError(
            f"{name}: found a JSON object with keys {_format_names(list(data))}; expected a list of examples "
            "or an object containing one list"
        )
    filled_keys = [key for key in list_keys if data[key]]
    if not filled_keys:
        return []
    if len(filled_keys) == 1:
        items = data[filled_keys[0]]
        return [_to_record(item, name, f"item {number}") for number, item in enumerate(items, 1)]

    columns = [data[key] for key in filled_keys]
    same_length = len({len(column) for column in columns}) == 1
    all_scalars = all(not isinstance(value, (dict, list)) for column in columns for value in column)
    if not (same_length and all_scalars):
        raise InputError(
            f"{name}: found several lists ({_format_names(filled_keys)}); expected one list of examples "
            "or columns of equal length"
        )
    return [
        Record(zip(filled_keys, values), f"item {number}")
        for number, values in enumerate(zip(*columns), 1)
    ]


def _parse_jsonl(text: str, name: str) -> list[Record]:
    records: list[Record] = []
    # Split on "\n" only: str.splitlines would also split on U+2028 and similar
    # characters, which JSON allows unescaped inside strings.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}: line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise InputError(f"{name}: line {number}: invalid JSON (nested too deeply)") from None
        records.append(_to_record(item, name, f"line {number}"))
    return records


def _parse_txt(text: str, name: str) -> list[Record]:
    return [
        Record({"text": line.strip()}, f"line {number}")
        for number, line in enumerate(text.split("\n"), 1)
        if line.strip()
    ]


def _to_record(item: Any, name: str, location: str) -> Record:
    if isinstance(item, dict):
        return Record(item, location)
    if isinstance(item, str):
        return Record({"text": item}, location)
    raise InputError(f"{name}: {location}: found a JSON {_json_type(item)}; expected an object or a string")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _format_names(names: Sequence[str], limit: int = 12) -> str:
    parts = [str(name) if name != "" else "''" for name in names[:limit]]
    if len(names) > limit:
        parts.append(f"... ({len(names)} in all)")
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# Field resolution and value checks


def _available_fields(records: Sequence[Record]) -> list[str]:
    """Return the field names of all records, in order of first appearance."""
    names: dict[str, None] = {}
    for record in records:
        for key in record:
            names.setdefault(str(key), None)
    return list(names)


def _match_field(available: Sequence[str], requested: str) -> str | None:
    """Return the available name equal to `requested`, or else equal ignoring case and spaces."""
    if requested in available:
        return requested
    folded = requested.strip().lower()
    for name in available:
        if name.strip().lower() == folded:
            return name
    return None


def _resolve_field(
    records: Sequence[Record],
    name: str,
    requested: str | None,
    candidates: Sequence[str],
    role: str,
    option: str,
    exclude: str | None = None,
) -> str:
    """Pick the field for one role (prompt, response or answer).

    An explicit `requested` name must exist. Otherwise the first candidate present wins,
    skipping `exclude`, which is the field already taken by the prompt.
    """
    available = _available_fields(records)
    if requested is not None:
        field = _match_field(available, requested)
        if field is None:
            raise InputError(
                f"{name}: field '{requested}' not found; available fields: {_format_names(available)} (name it with {option})"
            )
        return field
    for candidate in candidates:
        field = _match_field(available, candidate)
        if field is not None and field != exclude:
            return field
    raise InputError(
        f"{name}: no {role} field found; expected one of {', '.join(candidates)}; "
        f"available fields: {_format_names(available)} (name it with {option})"
    )


def _lookup(record: Record, requested: str) -> Any:
    """Return the value of `requested` in one record, matched as in _match_field, or None."""
    key = _match_field([str(key) for key in record], requested)
    return None if key is None else record[key]


def _text_value(record: Record, field: str, name: str) -> str:
    """Return the stripped, non-empty string in `field`, or raise naming the location."""
    if field not in record:
        raise InputError(f"{name}: {record.location}: field '{field}' is missing")
    value = record[field]
    if not isinstance(value, str):
        raise InputError(
            f"{name}: {record.location}: field '{field}' must be a string, found {_json_type(value)}"
        )
    value = value.strip()
    if not value:
        raise InputError(f"{name}: {record.location}: field '{field}' is empty")
    return value


def _optional_text(record: Record, requested: str) -> str:
    value = _lookup(record, requested)
    return value.strip() if isinstance(value, str) else ""


def _prompt_value(record: Record, field: str, name: str) -> str:
    """Build the prompt of one record.

    Alpaca-style rows: when the field is "instruction" and a non-empty "input" exists,
    the prompt is the instruction, a blank line, then the input. HarmBench rows: when the
    field is "behavior" and a non-empty "ContextString" exists, the prompt is the
    context, a blank line, then the behavior.
    """
    prompt = _text_value(record, field, name)
    folded = field.strip().lower()
    if folded == "instruction":
        extra = _optional_text(record, "input")
        if extra:
            prompt = f"{prompt}\n\n{extra}"
    elif folded == "behavior":
        context = _optional_text(record, "ContextString")
        if context:
            prompt = f"{context}\n\n{prompt}"
    return prompt


def _answer_value(record: Record, field: str, name: str) -> str:
    """Return the answer as a string: numbers via str(), booleans as "true"/"false"."""
    if field not in record:
        raise InputError(f"{name}: {record.location}: field '{field}' is missing")
    value = record[field]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return _text_value(record, field, name)


def _select(source: str, split: str | None, limit: int | None) -> list[Record]:
    """Read records and keep the first `limit`. Raise InputError when none remain."""
    if limit is not None and limit < 1:
        raise InputError(f"{source}: limit must be a positive number of examples, got {limit}")
    records = read_records(source, split=split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise InputError(f"{source}: no examples found")
    return records


# ---------------------------------------------------------------------------
# Public loaders


def load_prompts(
    source: str,
    field: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Load one prompt per record, in file order and without deduplication.

    `field` names the prompt column, and None picks the first of PROMPT_FIELDS present.
    `limit` keeps the first N records.
    """
    records = _select(source, split, limit)
    prompt_field = _resolve_field(records, source, field, PROMPT_FIELDS, "prompt", "--*-field on the command line, *_field in a run config")
    return [_prompt_value(record, prompt_field, source) for record in records]


def load_pairs(
    source: str,
    prompt_field: str | None = None,
    response_field: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Load {"prompt", "response"} pairs for supervised fine-tuning.

    Fields default to the first of PROMPT_FIELDS and RESPONSE_FIELDS present. The
    response field is never the prompt field. Both values must be non-empty strings.
    """
    records = _select(source, split, limit)
    prompt_key = _resolve_field(records, source, prompt_field, PROMPT_FIELDS, "prompt", "--*-field on the command line, *_field in a run config")
    response_key = _resolve_field(
        records, source, response_field, RESPONSE_FIELDS, "response", "--*-field on the command line, *_field in a run config", exclude=prompt_key
    )
    return [
        {
            "prompt": _prompt_value(record, prompt_key, source),
            "response": _text_value(record, response_key, source),
        }
        for record in records
    ]


def load_task(
    source: str,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    label_names: Mapping[Any, str] | None = None,
) -> list[dict]:
    """Load {"prompt", "answer"} examples for a downstream task evaluation.

    Fields default to the first of PROMPT_FIELDS and ANSWER_FIELDS present. Answers are
    strings: numeric labels such as SST-2's 0/1 become "0"/"1". With `label_names`, for
    example {"0": "negative", "1": "positive"}, each answer is replaced by its name, and
    an answer without an entry raises InputError. Mapping keys are compared as strings.
    """
    names = None if label_names is None else {str(key): str(value) for key, value in label_names.items()}
    records = _select(source, split, limit)
    prompt_key = _resolve_field(records, source, prompt_field, PROMPT_FIELDS, "prompt", "--*-field on the command line, *_field in a run config")
    answer_key = _resolve_field(
        records, source, answer_field, ANSWER_FIELDS, "answer", "--*-field on the command line, *_field in a run config", exclude=prompt_key
    )

    examples = []
    for record in records:
        answer = _answer_value(record, answer_key, source)
        if names is not None:
            if answer not in names:
                raise InputError(
                    f"{source}: {record.location}: label '{answer}' has no entry in label_names "
                    f"(known labels: {_format_names(list(names))})"
                )
            answer = names[answer]
        examples.append({"prompt": _prompt_value(record, prompt_key, source), "answer": answer})
    return examples


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Write rows as UTF-8 JSON Lines, replacing `path` atomically."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    atomic_write_text(path, "".join(lines))
