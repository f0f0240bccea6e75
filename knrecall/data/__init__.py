"""Items: the two-hop question table every later phase reads (DESIGN.md §3)."""
