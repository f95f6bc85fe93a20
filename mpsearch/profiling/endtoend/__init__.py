"""The end-to-end tier's measurements: what a unit quantizes (:mod:`.units`), image scores and damage
(:mod:`.scores`), the profile's e2e tables (:mod:`.results`), and generating and storing (:mod:`.measuring`).
Choosing what to measure and turning measurements into costs is allocation's: :mod:`mpsearch.allocation.endtoend`.
"""
