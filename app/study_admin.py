"""The observer-study tab's administrator dashboard: Table 3 beside the paper's, the reader view,
figures, readers (drop, set group), the long CSV export and the model runs.

AdminHandlers is mixed into app.study_tab.StudyTab (`self.svc` the StudyService, `self.demo_note`,
`self.export_keep_s`); build_admin_panel builds the panel's components and events inside the tab.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import gradio as gr

log = logging.getLogger("usam.study_tab")


class AdminHandlers:
    """The dashboard's handlers (plain methods: a test can call them without a browser)."""

    def admin_refresh(self, token):
        """Dashboard: study settings, our Table 3 beside the paper's, reader view, figures, readers."""
        info = self.svc.study_info(token)
        rep = self.svc.report(token)
        head = (f"**{info['name']}** · registration code `{info['code']}` · {info['cases']} cases · k = {info['k']} · "
                f"planned groups {info['group_sizes']} · arms {', '.join(info['arms'])} · idle threshold "
                f"{info['idle_threshold_s']:g} s · NSD tolerance {info['nsd_tolerance_mm']:g} mm · "
                "Dice, IoU and NSD in percent (%)")
        if self.demo_note:
            head += "\n\n" + self.demo_note
        readers = [[r["id"], r["login"], r["group"], r["status"], f"{r['done']}/{r['assigned']}", r["simulated"]]
                   for r in self.svc.readers(token)]
        f = rep.figures
        return (head, rep.markdown, rep.paper_markdown, rep.reader_markdown, f.get("time_by_group"),
                f.get("dice_by_case"), f.get("interobserver"), f.get("progress"), readers)

    ADMIN_OUTPUTS = 9  # what admin_refresh returns

    def admin_on_login(self, token):
        """The report as soon as an administrator is logged in (no blank dashboard until "Refresh");
        for a reader, a logout or a failed report nothing changes (the buttons still show errors)."""
        if not token:
            return tuple(gr.skip() for _ in range(self.ADMIN_OUTPUTS))
        try:
            if self.svc.me(token).get("role") != "admin":
                return tuple(gr.skip() for _ in range(self.ADMIN_OUTPUTS))
            return self.admin_refresh(token)
        except Exception:
            log.warning("admin report on login failed:\n%s", traceback.format_exc())
            return tuple(gr.skip() for _ in range(self.ADMIN_OUTPUTS))

    def admin_export(self, token):
        """Long-format CSV of every scored annotation, for download."""
        from app.security import delete_later, export_root, new_export_dir

        folder = new_export_dir(export_root(self.svc.db.settings), self.export_keep_s)
        try:
            path = str(self.svc.export_csv(token, folder / "annotations_long.csv"))
        except BaseException:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            raise
        delete_later(folder, self.export_keep_s)   # Gradio copies the file for the download when this returns
        return path

    def admin_drop(self, token, reader_id):
        """Drop a reader and re-assign their unfinished cases."""
        r = self.svc.drop_reader(token, reader_id)
        return f"Reader dropped: {r['reassigned']} cases re-assigned, {r['unplaced']} without a taker."

    def admin_set_group(self, token, reader_id, group):
        """Set a reader's experience group."""
        r = self.svc.set_group(token, reader_id, group)
        return f"Reader {r['id']} is now in group {r['group']}."

    def admin_run_models(self, token, progress=gr.Progress()):
        """Run and score U-SAM, U-SAM/P and U-SAM/B on every case (needs the model), with "n of N cases" progress."""
        from study.model_runs import VARIANTS

        n_cases = int(self.svc.study_info(token)["cases"])
        nv, done = len(VARIANTS), [0]

        def step(_text: str) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0] / max(n_cases * nv, 1),
                         desc=f"{done[0] // nv} of {n_cases} cases ({done[0]} of {n_cases * nv} runs)")

        if progress is not None:
            progress(0.0, desc=f"0 of {n_cases} cases")
        n = self.svc.run_models(token, progress=step)
        return f"{n} model runs scored ({n_cases} cases × {nv} variants); the report below is updated."


def build_admin_panel(tab: Any, token: Any, E: Callable) -> gr.Column:
    """The admin panel (hidden until an administrator logs in) and its events; `E`: study_tab._err."""
    with gr.Column(visible=False) as admin_panel:
        refresh_btn = gr.Button("Refresh report", variant="primary")
        a_head = gr.Markdown()
        gr.Markdown("### Table 3 (this study)")
        a_table = gr.Markdown()
        gr.Markdown("### Paper's Table 3 (reference)")
        a_paper = gr.Markdown()
        gr.Markdown("### Reader-level view")
        a_readerview = gr.Markdown()
        with gr.Row():
            f_time = gr.Plot(label="Time per case by group")
            f_dice = gr.Plot(label="Dice per case")
        with gr.Row():
            f_inter = gr.Plot(label="Inter-observer agreement")
            f_prog = gr.Plot(label="Progress")
        readers_df = gr.Dataframe(headers=["id", "login", "group", "status", "done", "simulated"],
                                  interactive=False, label="Readers")
        with gr.Row():
            rid_in = gr.Number(label="Reader id", precision=0)
            rgroup_in = gr.Radio([1, 2, 3], label="Group")
            setg_btn = gr.Button("Set group")
            drop_btn = gr.Button("Drop reader (re-assign unfinished)", variant="stop")
        with gr.Row():
            export_btn = gr.Button("Export long CSV")
            models_btn = gr.Button("Run U-SAM variants on all cases")
        export_file = gr.File(label="Export", interactive=False)
        a_status = gr.Markdown()
    ADMIN = [a_head, a_table, a_paper, a_readerview, f_time, f_dice, f_inter, f_prog, readers_df]
    refresh_btn.click(E(tab.admin_refresh), [token], ADMIN, api_name="study_admin_report")
    # the dashboard fills itself once an administrator is logged in (whichever way the token is set)
    token.change(E(tab.admin_on_login), [token], ADMIN, api_visibility="private")
    export_btn.click(E(tab.admin_export), [token], [export_file], api_name="study_admin_export")
    drop_btn.click(E(tab.admin_drop), [token, rid_in], [a_status], api_name="study_admin_drop")
    # Enter in the reader id box sets the group (never drops: that stays a deliberate click)
    gr.on([setg_btn.click, rid_in.submit], E(tab.admin_set_group), [token, rid_in, rgroup_in], [a_status],
          api_name="study_admin_set_group")
    models_btn.click(E(tab.admin_run_models), [token], [a_status], api_name="study_admin_run_models",
                     show_progress_on=[a_status]).success(E(tab.admin_refresh), [token], ADMIN,
                                                           api_visibility="private")
    return admin_panel
