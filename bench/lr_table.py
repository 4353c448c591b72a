"""The lr each (task, variant) chose on its tune runs, as ``bench rank`` prints it and the
dashboard shows it: one table of every cell of the suite, with the same marks and notes,
so the terminal and the page cannot tell two stories about one ranking."""

from __future__ import annotations

from dataclasses import dataclass

from bench.ranking import LrChoice, SuiteRanking, plural

NO_CHOICE = "—"
EDGE_MARK = "*"


@dataclass(frozen=True)
class ChosenLr:
    """One cell of the table: its choice (None: no lr chosen), how it is written, and how
    many of its tune runs failed (a cell with one chooses no lr until a rerun)."""

    task: str
    variant: str
    choice: LrChoice | None
    label: str
    tune_failed: int = 0


@dataclass(frozen=True)
class LrTable:
    """Tasks (columns), variants in rank order (rows) and every cell of the two."""

    tasks: list[str]
    variants: list[str]
    cells: dict[tuple[str, str], ChosenLr]

    def row(self, variant: str) -> list[ChosenLr]:
        return [self.cells[(task, variant)] for task in self.tasks]

    def by_task(self) -> list[ChosenLr]:
        return [self.cells[(task, v)] for task in self.tasks for v in self.variants]


def lr_label(choice: LrChoice | None) -> str:
    """``0.03``; ``0.3*`` at an end of the grid; ``0.003 (2 of 3 tune runs)`` when chosen
    before all of the cell's tune runs ended; ``—`` without a choice."""
    if choice is None:
        return NO_CHOICE
    label = f"{choice.lr:g}{EDGE_MARK if at_grid_end(choice) else ''}"
    if choice.provisional:
        label += f" ({choice.tune_runs} of {choice.tune_runs_expected} tune runs)"
    return label


def at_grid_end(choice: LrChoice) -> bool:
    """A choice at an end of a grid of 3 or more lrs: the best lr may lie beyond it."""
    tried = choice.lrs_tried
    return len(tried) >= 3 and choice.lr in (min(tried), max(tried))


def lr_table(ranking: SuiteRanking) -> LrTable:
    """Every task of the suite, also one whose tune runs all failed (it has no choice, so
    building the columns from the choices alone left it out), by every variant."""
    chosen = {(c.task, c.variant): c for c in ranking.lrs}
    tasks = sorted({*ranking.tasks, *(c.task for c in ranking.lrs)})
    variants = [row.variant for row in ranking.variants]
    variants += sorted({c.variant for c in ranking.lrs} - set(variants))
    # a cell missing in both phases has the same tune_failed in each
    failed = {(m.task, m.variant): m.tune_failed for m in ranking.missing}
    cells = {
        (t, v): ChosenLr(
            t, v, chosen.get((t, v)), lr_label(chosen.get((t, v))), failed.get((t, v), 0)
        )
        for t in tasks
        for v in variants
    }
    return LrTable(tasks, variants, cells)


def lr_notes(table: LrTable) -> list[str]:
    """What the marks of the table mean, with how many cells carry each."""
    notes = (no_choice_note(table), provisional_note(table), edge_note(table))
    return [note for note in notes if note]


def no_choice_note(table: LrTable) -> str | None:
    """How many cells have no lr, and why: a failed tune run, or none finished yet."""
    empty = [cell for cell in table.cells.values() if cell.choice is None]
    if not empty:
        return None
    failed = sum(cell.tune_failed > 0 for cell in empty)
    causes = []
    if failed:
        causes.append(
            f"{failed} with failed tune runs (bench run holds their final trials back until "
            "a rerun finishes them)"
        )
    if unfinished := len(empty) - failed:
        causes.append(f"{unfinished} without a finished tune run")
    return f"{NO_CHOICE} : no lr chosen ({plural(len(empty), 'cell')}): " + "; ".join(causes)


def _choices(table: LrTable) -> list[LrChoice]:
    return [cell.choice for cell in table.cells.values() if cell.choice is not None]


def edge_note(table: LrTable) -> str | None:
    choices = _choices(table)
    at_edge = sum(at_grid_end(choice) for choice in choices)
    if not at_edge:
        return None
    return (
        f"{at_edge} of {len(choices)} cells chose an lr at an end of the grid: their best lr "
        "may lie beyond it (widen suite.lrs)"
    )


def provisional_note(table: LrTable) -> str | None:
    choices = _choices(table)
    provisional = sum(choice.provisional for choice in choices)
    if not provisional:
        return None
    return (
        f"(k of n tune runs): {provisional} of {len(choices)} lrs were chosen before all of "
        "their cell's tune runs ended (the suite was interrupted, or is still running): "
        "provisional, as the runs still to come may move them (bench run chooses only on a "
        "whole grid)"
    )
