"""Reports of an alignment analysis: figures, HTML and Markdown, CSV, and the terminal summary."""
from surgery.analysis.report.build import Report, build_report
from surgery.analysis.report.terminal import summary_text

__all__ = ["Report", "build_report", "summary_text"]
