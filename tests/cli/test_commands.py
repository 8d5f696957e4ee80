"""The command line as a package: the commands by stage, in the order `relevance --help` lists them, each a thin
wrapper (parse, call one library function, print) that reports bad input as one line with exit code 2."""

from __future__ import annotations

import typer

from relevance.cli import app, evaluation, labels, options, pipeline, registry, serving, steps

COMMANDS = {  # name → the stage module that holds it, in the order of `relevance --help`
    "prepare": steps, "train-teacher": steps, "candidates": steps, "label": steps, "train-student": steps,
    "distil-towers": steps, "distil-query-tower": steps,
    "select": labels, "import-labels": labels, "judge-eval": evaluation, "fetch-backbone": steps,
    "evaluate": evaluation, "export": steps, "features": steps, "serve": serving, "serve-triton": serving,
    "score": serving, "traffic-sink": serving, "monitor": serving, "run": steps,
}


def test_every_command_is_in_its_stage_module_in_the_listed_order():
    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    assert group.list_commands(ctx) == [*COMMANDS, "pipeline", "registry", "canary"]
    for name, module in COMMANDS.items():
        assert group.get_command(ctx, name).callback.__module__ == module.__name__, name
    groups = {"pipeline": (pipeline, ["compile", "run", "submit", "schedule"]),
              "registry": (registry, ["list", "promote", "rollback"])}
    for name, (module, commands) in groups.items():
        sub = group.get_command(ctx, name)
        assert sub.list_commands(ctx) == commands
        assert {sub.get_command(ctx, c).callback.__module__ for c in commands} == {module.__name__}
    assert group.get_command(ctx, "canary").list_commands(ctx) == ["start", "promote", "rollback", "analyze",
                                                                  "local", "watch"]


def test_the_run_config_options_give_the_config_and_its_chain(tmp_path):
    loaded = options.run_config(None, "quick", str(tmp_path / "w"))
    assert loaded.profile == "quick" and loaded.workdir == str(tmp_path / "w")
    chain = options.open_chain(None, "quick", str(tmp_path / "w"))
    assert chain.root == tmp_path / "w" and chain.config == loaded


def test_bad_input_is_one_line_and_exit_2_before_any_work(cli, tmp_path):
    dry = cli("train-teacher", "-p", "quick", "-w", tmp_path / "run", "--dry-run", check=False)
    assert dry.returncode == 2 and "error: --dry-run prints the TrainJob manifest: use it with --trainjob" in dry.stderr
    assert not (tmp_path / "run").exists(), "nothing is prepared"
    export = tmp_path / "export.json"
    export.write_text("[]")
    aggregate = cli("import-labels", export, "--round", "1", "--aggregate", "median", "-p", "quick", "-w",
                    tmp_path / "run", check=False)
    assert aggregate.returncode == 2 and "expected majority or mean, got 'median'" in aggregate.stderr
    assert not (tmp_path / "run").exists()
