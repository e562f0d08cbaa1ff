"""The report: tables and figures of every grid in a results root, in <results_root>/report/.

Entry point: collapse.report.write.write_reports(root). Imports go one way: write -> rows, tables,
plots, chains, paper, stats and collapse.tasks (each task's report part, collapse/tasks/<name>_report.py,
uses the low modules); no low module imports write.
"""
