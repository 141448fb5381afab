"""`python -m agent start` (production) or `python -m agent dev`."""

from livekit.agents import cli

from agent.worker import build_server
from common.settings import get_settings

if __name__ == "__main__":
    cli.run_app(build_server(get_settings()))
