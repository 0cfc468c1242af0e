"""The regression benchmarks in suites/ run only on request: ``pytest suites/ --benchmark``.

They train and compile real models and time them, which takes minutes and a quiet machine, so a
plain ``pytest suites/`` collects them and skips them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark regression suites in suites/ (skipped otherwise)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmark suite: run with --benchmark")
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(skip)
