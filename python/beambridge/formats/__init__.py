"""Payload formats written straight into regions and read in place (DESIGN "Formats").

One module per format, imported by name so that loading ``beambridge`` never loads a
format's library: `beambridge.formats.arrow` (Arrow IPC stream, needs pyarrow).
"""
