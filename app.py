"""U-SAM Studio entry point (local and Hugging Face Spaces): `python app.py [--host H --port P ...]`."""
from __future__ import annotations

import os
import sys

# privacy defaults before gradio is imported: no telemetry, no share links, no run history
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_SHARE", "False")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")


def _warm_up(ctx) -> None:
    """Load the model and the slow imports in the background so the first click does not wait."""
    import importlib
    import logging
    import threading
    import traceback

    def work() -> None:
        try:
            ctx.get_model()
            from app.segment.opening import demo_case

            demo_case(0, ctx.config.demo_size)
            importlib.import_module("monai.metrics.utils")  # first reference metrics otherwise stall ~10 s
        except Exception:  # the page reports real errors when a user triggers them; the log keeps this one
            logging.getLogger("usam.app").warning("warm-up skipped:\n%s", traceback.format_exc())

    threading.Thread(target=work, name="usam-warm-up", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Parse flags / environment, build the UI and serve it."""
    from app.context import AppContext
    from app.settings import AppConfig, parse_config

    config: AppConfig = parse_config(argv)
    ctx = AppContext(config)
    from app.main import build_app, launch_kwargs

    demo = build_app(ctx)
    _warm_up(ctx)
    demo.queue(default_concurrency_limit=2)
    print(f"U-SAM Studio on http://{config.host}:{config.port} (device {ctx.device})", flush=True)
    demo.launch(**launch_kwargs(ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
