"""Page-numbered listing shared by every collection endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel


@dataclass(frozen=True)
class PageParams:
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


def page_params(
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> PageParams:
    return PageParams(page=page, limit=limit)


class Pagination(BaseModel):
    total: int
    page: int
    limit: int
    next_page: int | None

    @classmethod
    def of(cls, params: PageParams, total: int) -> Pagination:
        has_more = params.offset + params.limit < total
        return cls(
            total=total,
            page=params.page,
            limit=params.limit,
            next_page=params.page + 1 if has_more else None,
        )
