"""A run's history and where it came from: the epochs of every model it started from
(--init-from) and of its teachers, the minutes they took, the machines they ran on, and
the record of them that is safe to publish."""

from __future__ import annotations

from pathlib import Path

from training.checkpoints import REPLANNED
from training.settings import FOLDER_SETTINGS, shareable_settings


def lineage(training: dict | None, upto: float = float("inf")) -> list[dict]:
    """The per-epoch history of a run (up to epoch `upto`) and of every model it started
    from (--init-from), oldest first, numbered on from one run to the next. A starting
    model counts up to its best epoch: those are the weights the next run began from."""
    if not training:
        return []
    parent = training.get("parent")
    earlier = lineage(parent, parent.get("best_epoch", float("inf")) if parent else 0)
    offset = earlier[-1]["epoch"] if earlier else 0
    return earlier + [{**h, "epoch": h["epoch"] + offset} for h in training["history"] if h["epoch"] <= upto]


def fine_tune_starts(training: dict | None) -> list[tuple[int, bool]]:
    """Where each run of a model's line after the first began (the epochs before it, as
    `lineage` numbers them) and whether it distilled from a teacher, oldest first."""
    parent = training and training.get("parent")
    if not parent:
        return []
    before = lineage(parent, parent.get("best_epoch", float("inf")))
    return fine_tune_starts(parent) + [(before[-1]["epoch"] if before else 0, bool(training.get("teacher")))]


def public_record(training: dict | None) -> dict | None:
    """A training record (training.json, a teacher's record) as a card may publish it:
    at every level of its lineage each folder named by its own name, not by where it lay
    on the machine that trained it (settings and the command line alike), and no command
    where none replays that level (see `replayable`)."""
    if not training:
        return training
    flags = {"--" + key.replace("_", "-") for key in FOLDER_SETTINGS}
    record = dict(training)
    if record.get("command") and not replayable(record.get("history", [])):
        record["command"] = None
    if record.get("command"):
        words = record["command"].split()
        record["command"] = " ".join(Path(w).name if i and words[i - 1] in flags else w for i, w in enumerate(words))
    if "settings" in record:
        record["settings"] = shareable_settings(record["settings"])
    for key in ("parent", "teacher"):
        if isinstance(record.get(key), dict):
            record[key] = public_record(record[key])
    return record


def replayable(history: list[dict]) -> bool:
    """Whether one command trains this history again: not after a resume that changed
    --epochs, which re-planned the schedule part-way."""
    return not any(h.get("note", "").startswith(REPLANNED) for h in history)


def command_text(command: str | None, history: list[dict]) -> str:
    """How a card shows the command that trained a run: the command itself, or why no
    single command trains it again."""
    if command and replayable(history):
        return f"`{command}`"
    return (
        "no single command: it was resumed with a different --epochs part-way (see the "
        "notes), which re-planned its learning-rate schedule; training.json has its settings"
    )


def teachers_down_the_line(training: dict | None) -> list[tuple[int, float]]:
    """Each teacher a model's line distilled from: (the epochs before the run it taught,
    numbered as `lineage` numbers them; its training minutes), oldest first."""
    if not training:
        return []
    parent = training.get("parent")
    before = lineage(parent, parent.get("best_epoch", float("inf"))) if parent else []
    teacher = training.get("teacher")
    return teachers_down_the_line(parent) + (
        [(before[-1]["epoch"] if before else 0, teacher["training_minutes"])] if teacher else []
    )


def history_minutes(history: list[dict]) -> float:
    """The wall-clock minutes the epochs of a history took, each as its row records them."""
    return sum(h["seconds"] for h in history) / 60


def minutes_at_epochs(history: list[dict], teachers: list[tuple[int, float]]) -> list[float]:
    """Cumulative wall-clock minutes at the end of each epoch of a lineage history, a
    teacher's minutes counted before the first epoch it taught."""
    total, out = 0.0, []
    for h in history:
        total += sum(m for before, m in teachers if before == h["epoch"] - 1) + history_minutes([h])
        out.append(total)
    return out


def machine_spans(history: list[dict]) -> list[tuple[str, list[dict]]]:
    """The history cut where the machine changes: a run resumed over several sittings may
    move between machines (rows from before machines were recorded say so)."""
    spans: list[tuple[str, list[dict]]] = []
    for h in history:
        machine = h.get("machine", "machine not recorded")
        if spans and spans[-1][0] == machine:
            spans[-1][1].append(h)
        else:
            spans.append((machine, [h]))
    return spans


def machines_of(history: list[dict]) -> str:
    """The machine the run trained on, or each machine with its epochs, in order."""
    spans = machine_spans(history)
    if len(spans) == 1:
        return spans[0][0]
    return "; ".join(
        f"{machine} (epochs {rows[0]['epoch']}-{rows[-1]['epoch']})"
        if len(rows) > 1
        else f"{machine} (epoch {rows[0]['epoch']})"
        for machine, rows in spans
    )
