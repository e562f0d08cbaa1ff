"""The report's library: what a grid's report reads (view.py: SweepView, Row, Teacher, PaperTable), tables,
figures, statistics, the paper's values, the digest and the page.

Below collapse/tasks: each task's report part (collapse/tasks/<name>_report.py) uses these modules, and
none of them asks a task. What asks each sweep's task and writes every grid's report is one floor up,
collapse/reporting.py (write_reports(root)).
"""
