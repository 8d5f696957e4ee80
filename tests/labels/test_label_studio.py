"""The human-grading round trip against a real Label Studio (1.23.2, from `make label-studio-env`): `relevance
select` writes the project; through Label Studio's REST API an admin creates it from label_config.xml and imports
tasks.json, three annotators join through the organization's invite link and grade with their own API tokens (they
disagree, one skips a task), the admin exports JSON, and `relevance import-labels` merges it. What comes back is
what the server wrote, not what its documentation says it writes.

httpx rather than label-studio-sdk: the SDK pins numpy<2.3 (through opencv) and PyJWT<2.14, which would change the
project's venv; it stays in .venv-labelstudio, for the README's walk-through.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import krippendorff
import numpy as np
import pandas as pd
import pytest

from relevance.platform.services.label_studio import (
    ENV_VARIABLE,
    LabelStudioUnavailable,
    credentials,
    label_studio_install,
    label_studio_server,
)

ANNOTATORS = ("ann1@example.com", "ann2@example.com", "ann3@example.com")
# Grades (indices into the dataset's grade names) per task and annotator; "skip": the annotator cancelled the
# task (Label Studio's Skip), None: never opened it.
PLAN = [
    (3, 3, 2),        # majority 3
    (0, 1, "skip"),   # the skip leaves a tie, 0 vs 1: read_export takes the grade nearest the median, the lower
    (4, 4, 4),        # full agreement
    (4, 0, 4),        # majority 4 over a wide disagreement
    (1, None, None),  # one rating: a judgment, but nothing to agree or disagree with
    (None, None, None),  # nobody graded it: no judgment
]
MAJORITY = [3, 0, 4, 4, 1]
# Ordered annotator pairs that agree exactly, over the tasks with two or more ratings: 2/6 + 0/2 + 6/6 + 2/6.
EXACT_AGREEMENT = (2 + 0 + 6 + 2) / (6 + 2 + 6 + 6)


def test_a_missing_install_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VARIABLE, raising=False)
    with pytest.raises(LabelStudioUnavailable, match=r"make label-studio-env"):
        label_studio_install(tmp_path / "nowhere")
    monkeypatch.setenv(ENV_VARIABLE, str(tmp_path / "elsewhere"))
    with pytest.raises(LabelStudioUnavailable, match=r"elsewhere/bin/label-studio"):
        label_studio_install()


def test_credentials_come_from_the_environment_or_the_last_start(tmp_path, monkeypatch):
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="must be 6 to 40 characters, got 5"):
        credentials(tmp_path / "a", None, None, "short")
    with pytest.raises(ValueError, match="must be an email address"):
        credentials(tmp_path / "a", "admin", None, None)
    (tmp_path / "b").mkdir()
    made_up = credentials(tmp_path / "b", None, None, None)
    assert credentials(tmp_path / "b", None, None, None) == made_up  # what the server was first started with
    assert (tmp_path / "b/admin.json").stat().st_mode & 0o077 == 0  # a password: the owner's alone
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "from-the-environment")
    assert credentials(tmp_path / "b", None, "pw", None) == (made_up[0], "pw", "from-the-environment")


def join_as_annotator(url: str, invite_url: str, email: str) -> tuple[int, str]:
    """Sign up through the invite link, as an annotator does in a browser (a CSRF-protected form), and read the
    API token the account page shows; returns (user id, token)."""
    with httpx.Client(base_url=url, timeout=60) as browser:
        browser.get(invite_url).raise_for_status()  # sets the CSRF cookie
        signed_up = browser.post(invite_url, data={"email": email, "password": f"{email}-pass",
                                                   "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
                                 headers={"Referer": f"{url}{invite_url}"})
        assert signed_up.status_code == 302, f"sign-up of {email} failed: {signed_up.status_code}"
        token = browser.get("/api/current-user/token").raise_for_status().json()["token"]
    me = httpx.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=60)
    return me.raise_for_status().json()["id"], token


def grade(url: str, token: str, task_id: int, choice: str | None) -> None:
    """One annotation as the annotator with ``token``: ``choice`` picked, or (None) the task skipped."""
    body = ({"result": [], "was_cancelled": True} if choice is None else
            {"result": [{"from_name": "grade", "to_name": "item", "type": "choices", "value": {"choices": [choice]}}],
             "lead_time": 4.2})
    httpx.post(f"{url}/api/tasks/{task_id}/annotations", json=body, headers={"Authorization": f"Token {token}"},
               timeout=60).raise_for_status()


def independent_alpha() -> float:
    """Krippendorff's alpha (ordinal) from PLAN itself: annotators × tasks with two or more ratings."""
    rated = [task for task in PLAN if sum(isinstance(g, int) for g in task) >= 2]
    matrix = np.array([[g if isinstance(g, int) else np.nan for g in task] for task in rated], dtype=float).T
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal"))


@pytest.mark.slow  # about 2 minutes: Label Studio's first start migrates its database (~1 min), the tiny chain
def test_a_grading_round_trips_through_a_running_label_studio(cli, run_settings, write_config, tmp_path):
    config = write_config(tmp_path, run_settings())
    project = tmp_path / "label-studio-project"
    # The teacher's run (prepare, pool, teacher, labels) and Label Studio's first start overlap: both take a minute.
    select = subprocess.Popen([sys.executable, "-m", "relevance.cli", "select", "--config", str(config),
                               "--budget", str(len(PLAN)), "--strategy", "entropy", "--per-query", "2",
                               "--out", str(project)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with label_studio_server(tmp_path / "ls") as studio:
        output, _ = select.communicate(timeout=600)
        assert select.returncode == 0, f"relevance select failed:\n{output[-4000:]}"
        grades = json.loads((tmp_path / "run/data/dataset.json").read_text())["grade_names"]
        tasks = json.loads((project / "tasks.json").read_text())
        assert len(tasks) == len(PLAN)
        export, snapshot, annotators = annotate(studio, project, grades)
    (tmp_path / "export.json").write_bytes(export)
    (tmp_path / "snapshot.json").write_bytes(snapshot)
    restart_on_the_same_data(tmp_path / "ls")
    check_export(json.loads(export), tasks, annotators)
    check_export(json.loads(snapshot), tasks, annotators, expanded=True)

    before = pd.read_parquet(tmp_path / "run/data/judgments.parquet")
    out = cli("import-labels", tmp_path / "export.json", "--round", "1", "--config", config).stdout
    assert "5 pair(s) from 12 rating(s) by 3 annotator(s)" in out, out
    assert "skipped: 1 cancelled annotations, 1 tasks without annotations" in out, out
    alpha = float(re.search(r"Krippendorff's alpha \(ordinal\) (-?[\d.]+)", out).group(1))
    exact = float(re.search(r"exact agreement between annotators ([\d.]+)%", out).group(1)) / 100
    assert alpha == pytest.approx(independent_alpha(), abs=5e-4)
    assert exact == pytest.approx(EXACT_AGREEMENT, abs=5e-4)
    assert "round 1: 5 new train judgment(s), 0 pair(s) already judged" in out, out
    # The snapshot export, its annotators expanded to {id, email, …}, reads the same.
    summary = out.splitlines()[0]
    assert cli("import-labels", tmp_path / "snapshot.json", "--round", "2", "--dry-run", "--config",
               config).stdout.splitlines()[0] == summary

    after = pd.read_parquet(tmp_path / "run/data/judgments.parquet")
    added = after[after["round"] == 1].set_index(["query_id", "item_id"])
    expected = {(t["data"]["query_id"], t["data"]["item_id"]): g for t, g in zip(tasks, MAJORITY)}
    assert added["grade"].to_dict() == expected
    assert set(added["split"]) == {"train"} and len(after) == len(before) + len(expected)
    # The judgments that were there stay as they were.
    pd.testing.assert_frame_equal(after[after["round"] == 0].drop(columns="round").reset_index(drop=True),
                                  before.drop(columns="round", errors="ignore"), check_dtype=False)


def restart_on_the_same_data(work_dir) -> None:
    """Started again on its work directory, Label Studio has the grades and the admin of the first start; an
    admin token other than the first start's is refused at start, not at the first API call."""
    with label_studio_server(work_dir) as studio:
        projects = httpx.get(f"{studio.url}/api/projects", headers=studio.headers, timeout=60).json()["results"]
        assert [(p["total_annotations_number"], p["skipped_annotations_number"]) for p in projects] == [(12, 1)]
    with pytest.raises(ValueError, match="refuses the API token \\(401\\)"), \
            label_studio_server(work_dir, token="not-the-first-token"):
        pass


def annotate(studio, project, grades: list[str]) -> tuple[bytes, bytes, dict[str, int]]:
    """Create the project, import tasks.json, three annotators grade by PLAN; returns the JSON export (Export in
    the UI), a snapshot export with the annotators expanded (the exports API, the SDK's way) and the annotators'
    user ids by email."""
    with httpx.Client(base_url=studio.url, headers=studio.headers, timeout=120) as admin:
        return _annotate(admin, studio.url, project, grades)


def _annotate(admin: httpx.Client, url: str, project, grades: list[str]) -> tuple[bytes, bytes, dict[str, int]]:
    created = admin.post("/api/projects", json={"title": "relevance grading, round 1", "maximum_annotations": 3,
                                                "label_config": (project / "label_config.xml").read_text()})
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    with open(project / "tasks.json", "rb") as upload:  # uploaded as the file it is, as the UI's Import does
        imported = admin.post(f"/api/projects/{project_id}/import", files={"file": ("tasks.json", upload)})
    assert imported.status_code == 201 and imported.json()["task_count"] == len(PLAN), imported.text
    listed = admin.get("/api/tasks", params={"project": project_id, "page_size": 100}).raise_for_status().json()
    task_ids = [task["id"] for task in sorted(listed["tasks"], key=lambda task: task["inner_id"])]

    invite_url = admin.get("/api/invite").raise_for_status().json()["invite_url"]
    annotators = {email: join_as_annotator(url, invite_url, email) for email in ANNOTATORS}
    for task_id, plan in zip(task_ids, PLAN):
        for (_, token), planned in zip(annotators.values(), plan):
            if planned is not None:
                grade(url, token, task_id, None if planned == "skip" else grades[planned])
    export = admin.get(f"/api/projects/{project_id}/export", params={"exportType": "JSON",
                                                                      "download_all_tasks": "true"})
    assert export.status_code == 200, export.text
    made = admin.post(f"/api/projects/{project_id}/exports", json={
        "title": "round 1", "serialization_options": {"annotations__completed_by": {"only_id": False}}})
    assert made.status_code == 201 and made.json()["status"] == "completed", made.text
    snapshot = admin.get(f"/api/projects/{project_id}/exports/{made.json()['id']}/download",
                         params={"exportType": "JSON"})
    assert snapshot.status_code == 200, snapshot.text
    return export.content, snapshot.content, {email: user_id for email, (user_id, _) in annotators.items()}


def check_export(exported: list[dict], tasks: list[dict], annotators: dict[str, int], expanded: bool = False) -> None:
    """The server's export carries what import-labels relies on: the pair's ids back in ``data``, each
    annotation's author as the annotator's own user id (``expanded``: {id, email, …}), the skip as was_cancelled."""
    exported = sorted(exported, key=lambda task: task["inner_id"])
    assert [{k: t["data"][k] for k in ("query_id", "item_id")} for t in exported] == \
        [{k: t["data"][k] for k in ("query_id", "item_id")} for t in tasks]
    ids = list(annotators.values()) if not expanded else [
        {"id": user_id, "email": email} for email, user_id in annotators.items()]
    assert len({str(user) for user in ids}) == 3
    for task, plan in zip(exported, PLAN):
        authors = [a["completed_by"] if not expanded else {k: a["completed_by"][k] for k in ("id", "email")}
                   for a in task["annotations"]]
        assert authors == [user for user, planned in zip(ids, plan) if planned is not None]
        assert [a["was_cancelled"] for a in task["annotations"]] == [p == "skip" for p in plan if p is not None]
