"""The held-out comparison: heldout.json's content and the table the mode prints."""


def build(lc, metric: str, steps, rows: dict) -> dict:
    """rows {name: {"search": fitness on the search seeds or None, **held-out metrics}}."""
    return {
        "metric": metric,
        "sampler": lc.sampler,
        "steps": list(steps),
        "search_seed": lc.search_seed,
        "search_samples": lc.search_samples,
        "heldout_seed": lc.heldout_seed,
        "heldout_samples": lc.heldout_samples,
        "results": rows,
    }


def table(report: dict) -> str:
    """One line per candidate, best held-out value first."""
    key, rows = report["metric"], report["results"]
    width = max(map(len, rows))
    lines = [
        f"{'':<{width}}  {'search seeds':>12}  {'held-out':>10}   ({key}, {report['sampler']})"
    ]
    for name, row in sorted(rows.items(), key=lambda r: r[1][key]):
        search_value = "" if row["search"] is None else f"{row['search']:.4f}"
        lines.append(f"{name:<{width}}  {search_value:>12}  {row[key]:>10.4f}")
    return "\n".join(lines)
