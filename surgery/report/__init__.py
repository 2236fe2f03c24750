"""Reports of an alignment analysis: figures, HTML and Markdown, CSV, and the terminal summary."""
from surgery.report.build import Report, build_report
from surgery.report.terminal import summary_text

__all__ = ["Report", "build_report", "summary_text"]
