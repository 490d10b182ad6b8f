"""Reports for brands: prints, failures and royalties counted from the audit log."""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Annotated, Any

from litestar import MediaType, Response, get
from litestar.params import QueryParameter

from api.audit_schemas import PrintReportOut
from api.auth import Auth, Svc, tenant_of
from api.idempotency import in_thread
from api.services import Services
from licensing import reports
from licensing.reports import GroupBy


@get("/v1/reports/prints", tags=["reports"], media_type=MediaType.JSON)
async def print_report(
    reader: Auth,
    services: Svc,
    start: Annotated[date, QueryParameter(name="from", description="first day (UTC)")],
    end: Annotated[date, QueryParameter(name="to", description="last day, inclusive (UTC)")],
    group_by: Annotated[str, QueryParameter(pattern=r"^(part|facility|month)$")] = "part",
    format: Annotated[str, QueryParameter(pattern=r"^(json|csv)$")] = "json",
    brand_id: Annotated[str | None, QueryParameter(max_length=40)] = None,
) -> Response[Any]:
    """Prints per part, facility or month in [from, to]; ``format=csv`` for a spreadsheet."""
    tenant = tenant_of(reader, brand_id)
    report = await in_thread(_report, services, tenant, start, end, GroupBy(group_by))
    if format == "csv":
        name = f"prints-{start.isoformat()}-{end.isoformat()}-{group_by}.csv"
        return Response(
            content=_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    return Response(content=PrintReportOut.of(report), media_type=MediaType.JSON)


def _report(
    services: Services, brand_id: str, first: date, last: date, by: GroupBy
) -> reports.PrintReport:
    start, end = reports.day_range(first, last)
    with services.transaction() as session:
        return reports.print_report(session, brand_id, start, end, by)


def _csv(report: reports.PrintReport) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(reports.csv_rows(report))
    return out.getvalue()


ROUTES = [print_report]
