"""Seeing what a run learned: figures, the HTML reports of a run and of a sweep, and the explorer."""

from betavae.report.run_report import run_report
from betavae.report.sweep_report import sweep_report

__all__ = ["run_report", "sweep_report"]
