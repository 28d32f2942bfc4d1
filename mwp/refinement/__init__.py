"""Refinement: recover training problems whose teacher equation failed verification."""

from mwp.refinement.template_search import (
    ENUMERATION_CONSTANTS,
    EnumerationSearch,
    SearchStats,
    enumerate_equations,
    search_problem,
)

__all__ = [
    "ENUMERATION_CONSTANTS",
    "EnumerationSearch",
    "SearchStats",
    "enumerate_equations",
    "search_problem",
]
