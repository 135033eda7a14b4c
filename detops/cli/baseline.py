"""``detops baseline …``: the human-level performance (HLP) a model is measured against."""

from __future__ import annotations

import typer

from detops.cli._common import (
    JsonOpt,
    WorkspaceOpt,
    comma_list,
    fail,
    open_workspace,
    print_json,
)

baseline_app = typer.Typer(
    help="Baselines: human-level performance (annotators against each other).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")


@baseline_app.command("hlp")
def hlp(
    ref: str = typer.Argument(..., help="NAME@vN labelled by several annotators."),
    annotators: str = typer.Option(None, "--annotators", help="Only these, e.g. 'A,B,C'."),
    splits: str = typer.Option(
        None, "--splits",
        help="Image groups to score, e.g. 'all,val' (default: all and each split).",
    ),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, help="Resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (the model evaluation uses 0)."),
    iou: float = typer.Option(0.5, "--iou", help="IoU at which annotators' boxes match."),
    all_labelled: bool = typer.Option(
        False, "--all-labelled", help="Every annotator looked at every image."
    ),
    store: bool = typer.Option(True, "--store/--no-store", help="Record it as the baseline."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Score each annotator against the consensus of the others, with the model's metrics."""
    from detops.data.baseline import human_level, save_baseline, summary_lines
    from detops.data.versions import get_version, load_version

    ws = open_workspace(workspace)
    dv = get_version(ws, ref)
    names = comma_list(annotators, "--annotators", "A,B")
    groups = comma_list(splits, "--splits", "all,val")
    params = {"annotators": names, "splits": groups, "bootstrap": bootstrap, "seed": seed,
              "iou": iou, "all_labelled": all_labelled}
    result = human_level(load_version(ws, dv), annotators=names, splits=groups,
                         bootstrap=bootstrap, seed=seed, iou=iou, all_labelled=all_labelled)
    result["dataset"] = dv.ref
    if store:
        save_baseline(ws, dv, result, params)
    if as_json:
        print_json({**result, "stored": store})
        return
    typer.echo(f"{dv.ref}: {result['definition']}")
    for split in result["splits"]:
        for line in summary_lines(result, split):
            typer.echo(line)
    for note in result["notes"]:
        typer.echo(f"  note: {note}")
    typer.echo(f"stored as the baseline of {dv.ref}" if store else "not stored (--no-store)")


@baseline_app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME@vN"),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The stored HLP baseline of a dataset version (or of the dataset a consensus came from)."""
    from detops.data.baseline import get_baseline, summary_lines

    ws = open_workspace(workspace)
    base = get_baseline(ws, ref)
    if base is None:
        fail(f"no baseline stored for {ref}; compute one with `detops baseline hlp {ref}`", 1)
    if as_json:
        print_json(base)
        return
    typer.echo(f"baseline of {base['dataset']} (computed {base['created_at'][:19]})")
    for split in base["splits"]:
        for line in summary_lines(base, split):
            typer.echo(line)
