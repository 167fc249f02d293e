"""Particle id rules."""
from graph.ids import is_particle


def test_particle_ids_match_whole_strings_only():
    assert is_particle("a" * 64)
    assert not is_particle("a" * 64 + "\n")          # Python's "$" would allow this
    assert not is_particle("A" * 64)
    assert is_particle("Qm" + "a" * 44)
    assert not is_particle("Qm" + "a" * 44 + "\n")
