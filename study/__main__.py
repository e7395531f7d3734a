"""The `python -m study ...` command line (runs on the server, trusted: no login needed)."""
from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import sys
from pathlib import Path
from typing import Mapping

from usam.errors import UsamError


def _db(args):
    from study.db import get_database

    return get_database(args.db, settings=args.settings)


def _groups(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("give three numbers like 15,14,17") from None


def cmd_init(args) -> int:
    """Create or upgrade the schema."""
    from sqlalchemy.engine import make_url

    db = _db(args)
    print(f"database ready: {make_url(db.url).render_as_string(hide_password=True)}")
    return 0


def cmd_import(args) -> int:
    """Import a case folder into a new (or the given) study and save its plan."""
    from study import ops, studies

    db = _db(args)
    with db.session() as s:
        if args.study:
            st = studies.get_study(s, args.study)
        else:
            st = ops.create_study(s, args.name, code=args.code, k=args.k, group_sizes=args.groups,
                                  arms=args.arms.split(","), seed=args.seed, idle_threshold_s=args.idle,
                                  nsd_tolerance_mm=args.nsd_tolerance)
        cases = ops.import_cases(s, st, args.dir)
        print(f"study {st.id} '{st.name}': {len(cases)} cases imported; registration code {st.code}; "
              f"k={st.k}, groups {st.group_sizes}, arms {st.arms}")
    return 0


def cmd_add_admin(args) -> int:
    """Add an administrator; the password comes from stdin, $USAM_STUDY_ADMIN_PASSWORD or a prompt."""
    from study import ops

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = args.settings.admin_password or getpass.getpass("password: ")
    with _db(args).session() as s:
        u = ops.add_clinician(s, args.login, password, role="admin", name=args.name)
        print(f"admin '{u.login}' added")
    return 0


def cmd_demo(args) -> int:
    """Set up the 20-case phantom demo study (if no study has cases)."""
    from study import ops

    sid, pw_file = ops.ensure_demo_study(_db(args), args.size)
    print(f"study {sid} ready" + (f"; admin password written to {pw_file}" if pw_file else ""))
    return 0


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def cmd_report(args) -> int:
    """Print Table 3 (ours and the paper's); --out writes Markdown, JSON rows and HTML figures."""
    from study import studies
    from study.report import build_report

    db = _db(args)
    with db.session() as s:
        rep = build_report(s, studies.get_study(s, args.study), n_boot=args.boot, with_figures=bool(args.out))
    print("# Table 3 (this study)\n")
    print(rep.markdown)
    print("\n# Reader-level view (mean of each reader's mean Dice)\n")
    for r in rep.reader_rows:
        d = r["dice_mean"]
        print(f"{r['row']}: {_fmt(d['mean'])} [{_fmt(d['lo'])}, {_fmt(d['hi'])}] over {d['readers']} readers")
    print("\n# Paper's Table 3 (for reference)\n")
    print(rep.paper_markdown)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table3.md").write_text(rep.markdown + "\n\n" + rep.paper_markdown + "\n")
        (out / "table3.json").write_text(json.dumps(rep.rows, indent=1, default=str))
        for name, fig in rep.figures.items():
            fig.write_html(str(out / f"{name}.html"), include_plotlyjs="cdn")
        print(f"\nwritten to {out}")
    return 0


def cmd_simulate(args) -> int:
    """Fill a study with simulated readers (sets up the demo study first if there is none)."""
    from study import ops
    from study.simulate import simulate

    db = _db(args)
    sid = args.study
    if sid is None:
        sid, _ = ops.ensure_demo_study(db, args.size)
    res = simulate(db, sid, args.readers, tuple(args.groups), args.seed,
                   max_cases_per_reader=args.max_cases, progress=print if args.verbose else None)
    print(f"simulated {res['readers']} readers: {res['submitted']} submissions, {res['slices_saved']} slices saved")
    if args.models:
        cmd_run_models(argparse.Namespace(db=args.db, settings=args.settings, study=sid, checkpoint=args.checkpoint,
                                          checkpoint_env=args.checkpoint_env, variants="usam,usam_p,usam_b",
                                          device=args.device))
    return 0


def cmd_run_models(args) -> int:
    """Run and score U-SAM, U-SAM/P and U-SAM/B (GT-derived prompts) on every case."""
    from study.model_runs import default_session_factory, run_model_variants

    factory = default_session_factory(args.checkpoint, args.device, env_checkpoint=args.checkpoint_env)
    n = run_model_variants(_db(args), args.study, factory, tuple(args.variants.split(",")), progress=print)
    print(f"{n} model runs stored")
    return 0


def cmd_backup(args) -> int:
    """Consistent SQLite backup to a new file."""
    from study.export import backup_sqlite

    print(f"backup written: {backup_sqlite(_db(args), args.out)}")
    return 0


def cmd_export(args) -> int:
    """Long-format CSV (OUT/annotations_long.csv) and, with --nifti, masks under OUT/masks/."""
    from study import studies
    from study.export import export_long_csv, export_nifti

    out = Path(args.out)
    with _db(args).session() as s:
        st = studies.get_study(s, args.study)
        p = export_long_csv(s, st, out / "annotations_long.csv")
        print(f"CSV: {p}")
        if args.nifti:
            paths = export_nifti(s, st, out / "masks")
            print(f"NIfTI masks: {len(paths)} in {out / 'masks'}")
    return 0


def cmd_drop(args) -> int:
    """Drop a reader and re-assign their unfinished cases."""

    from study import planning
    from study.errors import NotFound
    from study.models import Study

    with _db(args).session() as s:
        from study.auth import find_login

        u = find_login(s, args.login)            # the canonical form (NFKC + casefold), as at login
        if u is None or u.study_id is None:
            raise NotFound(f"No reader {args.login!r}.")
        m = planning.drop_reader(s, s.get(Study, u.study_id), u)
        print(f"{args.login} dropped; {sum(v is not None for v in m.values())} assignments re-assigned, "
              f"{sum(v is None for v in m.values())} without a taker")
    return 0


def cmd_close_registration(args) -> int:
    """Give the cases of never-claimed reader slots to the registered readers."""
    from study import planning, studies

    with _db(args).session() as s:
        placed, unplaced = planning.reassign_unclaimed(s, studies.get_study(s, args.study))
    print(f"{placed} assignments re-assigned, {unplaced} without a taker")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="python -m study", description="U-SAM Studio observer study")
    p.add_argument("--db", default=None, help="SQLAlchemy URL (default $USAM_STUDY_DB, else SQLite in $USAM_STUDY_DATA)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create/upgrade the database schema").set_defaults(fn=cmd_init)
    q = sub.add_parser("import-cases", help="import cases (manifest.json or cases.csv) and plan assignments")
    q.add_argument("dir")
    q.add_argument("--study", type=int, default=None, help="add to this study instead of creating one")
    q.add_argument("--name", default="Observer study")
    q.add_argument("--code", default=None, help="registration code (default: random)")
    q.add_argument("--k", type=int, default=10, help="minimum reads per case (default 10)")
    q.add_argument("--groups", type=_groups, default=[15, 14, 17], help="planned readers per group")
    q.add_argument("--arms", default="manual", help="clinician arms: manual,usam_p,usam_b,ai_edit")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--idle", type=float, default=120.0, help="idle threshold in seconds")
    q.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    q.set_defaults(fn=cmd_import)
    q = sub.add_parser("add-admin", help="add a study administrator")
    q.add_argument("--login", default="admin")
    q.add_argument("--name", default="Study administrator")
    q.add_argument("--password-stdin", action="store_true")
    q.set_defaults(fn=cmd_add_admin)
    q = sub.add_parser("demo", help="set up the 20-case phantom demo study")
    q.add_argument("--size", default=None, choices=("small", "full"))
    q.set_defaults(fn=cmd_demo)
    q = sub.add_parser("report", help="Table 3 and figures")
    q.add_argument("--study", type=int, default=None)
    q.add_argument("--out", default=None, help="folder for table3.md/json and figure HTML")
    q.add_argument("--boot", type=int, default=1000, help="bootstrap replicates")
    q.set_defaults(fn=cmd_report)
    q = sub.add_parser("simulate", help="simulated readers through the real service")
    q.add_argument("--readers", type=int, default=46)
    q.add_argument("--groups", type=_groups, default=[15, 14, 17])
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--study", type=int, default=None)
    q.add_argument("--size", default=None, choices=("small", "full"), help="demo cohort size if none exists")
    q.add_argument("--max-cases", type=int, default=None, help="stop each reader after this many cases")
    q.add_argument("--models", action="store_true", help="also run the U-SAM model variants")
    q.add_argument("--checkpoint", default=None)
    q.add_argument("--device", default="cpu")
    q.add_argument("--verbose", action="store_true")
    q.set_defaults(fn=cmd_simulate)
    q = sub.add_parser("run-models", help="score U-SAM, U-SAM/P, U-SAM/B on every case")
    q.add_argument("--study", type=int, default=None)
    q.add_argument("--checkpoint", default=None)
    q.add_argument("--variants", default="usam,usam_p,usam_b")
    q.add_argument("--device", default="cpu")
    q.set_defaults(fn=cmd_run_models)
    q = sub.add_parser("backup", help="SQLite backup (backup API) to a new file")
    q.add_argument("out")
    q.set_defaults(fn=cmd_backup)
    q = sub.add_parser("export", help="long CSV (+ NIfTI masks)")
    q.add_argument("out")
    q.add_argument("--study", type=int, default=None)
    q.add_argument("--nifti", action="store_true")
    q.set_defaults(fn=cmd_export)
    q = sub.add_parser("drop-reader", help="drop a reader and re-assign their unfinished cases")
    q.add_argument("login")
    q.set_defaults(fn=cmd_drop)
    q = sub.add_parser("close-registration", help="re-assign the cases of unclaimed reader slots")
    q.add_argument("--study", type=int, default=None)
    q.set_defaults(fn=cmd_close_registration)
    return p


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one subcommand with the settings of `environ` (default: this process's); user errors
    (also a bad USAM_STUDY_* value) print a message and exit 2."""
    from study.settings import StudySettings

    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    args.checkpoint_env = env.get("USAM_CHECKPOINT") or None   # the model runs' weights: flag > this > demo
    try:
        args.settings = StudySettings.from_env(env)
        return int(args.fn(args) or 0)
    except UsamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
