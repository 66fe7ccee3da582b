"""The example system's read sides: projections that translate sales' events into the
consuming contexts' own language."""
