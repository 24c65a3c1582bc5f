"""Evaluation: VQA benchmark readers and official scorers, answer generation, encoder benchmarks, reports.

Submodules are imported explicitly (e.g. `reasonclip_llava.evaluation.benchmarks`,
`reasonclip_llava.evaluation.scoring`) so that importing this package stays free of torch.
"""
