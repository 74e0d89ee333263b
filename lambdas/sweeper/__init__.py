"""The deadline sweeper: every upload stuck past its deadline gets an error record."""
