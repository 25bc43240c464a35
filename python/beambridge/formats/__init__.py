"""Payload formats written straight into shared memory and read in place (protocol/SPEC.md
§5.1, §10.1, protocol/formats/).

One module (or package) per format, imported by name so that loading ``beambridge``
never loads a format's library: `beambridge.formats.tensor` (NumPy arrays, bundles and
COO arrays), `beambridge.formats.arrow` (Arrow IPC streams, needs pyarrow),
`beambridge.formats.packed` (packed number lists), `beambridge.formats.records`
(record lists and column maps as Arrow streams) and `beambridge.formats.selection`
(what the last two share: the auto policy's minimums, `Unsuitable`).
"""
