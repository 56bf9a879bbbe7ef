"""The README's route table, generated from the routes (a test keeps the README in step).

    python -m runtime.api.docs
"""

from __future__ import annotations

from runtime.api.endpoint import Route

AUTH_WORDS = {
    "public": "none",
    "admin": "admin",
    "tenant": "runtime or admin + X-Tenant-ID",
    "tenant_admin": "admin + X-Tenant-ID",
    "any": "runtime or admin",
}


def route_table(routes: list[Route]) -> str:
    lines = ["| method | path | auth | rate class | what |", "| --- | --- | --- | --- | --- |"]
    for r in routes:
        lines.append(
            f"| {r.method} | `{r.path}` | {AUTH_WORDS[r.auth]} | {r.effective_rate_class or '-'} | {r.summary} |"
        )
    return "\n".join(lines)


def main() -> None:
    from runtime.api.routes import all_routes

    print(route_table(all_routes()))


if __name__ == "__main__":
    main()
