"""What several commands share about a case: the DICOM input options, reading CT + PET, printing what was measured."""

from __future__ import annotations


def dicom_input_options(sp) -> None:
    """Options for CT/PET given as DICOM folders: which series, and the PET's units."""
    sp.add_argument("--ct-series", metavar="UID", help="SeriesInstanceUID of the CT when the folder holds several")
    sp.add_argument("--pet-series", metavar="UID", help="SeriesInstanceUID of the PET when the folder holds several")
    sp.add_argument("--pet-units", default="auto", choices=["auto", "suv"],
                    help="auto: a DICOM PET is converted to SUVbw from its tags (a PET file is taken as SUV); "
                         "suv: the PET values are SUV already")


def read_dicom_aware_inputs(args):
    """CT and PET of ``args`` (files or DICOM folders), the PET in SUV."""
    import sys

    from HNTumorSegLib.cases.inputs import read_case

    inputs = read_case(args.ct, args.pet, ct_series=args.ct_series, pet_series=args.pet_series,
                       pet_units=args.pet_units)
    for line in inputs.warnings:  # the run goes on; the report keeps them ("input_warnings")
        print(f"hntumorseg: warning: {line}", file=sys.stderr)
    return inputs


def print_measurements(structures: dict, lesions: list | None = None) -> None:
    """Each structure's totals, then each of its lesions on a line of its own."""
    from HNTumorSegLib.evaluation.lesions import describe_lesion

    for name, s in structures.items():
        if s["voxels"]:
            print(f"  {name}: {s['volume_ml']:.1f} mL, SUVmax {s['suv_max']:.1f}, SUVmean {s['suv_mean']:.1f}, "
                  f"TLG {s['tlg']:.1f}")
            for row in lesions or []:
                if row["structure"] == name:
                    print(f"    {describe_lesion(row)}")
        else:
            print(f"  {name}: none found")
