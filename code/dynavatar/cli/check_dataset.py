"""Check an IMavatar-format dataset and report every problem at once (each naming file and frame).

    python scripts/check_dataset.py --conf confs/subject1.conf            # the train and test videos of a conf
    python scripts/check_dataset.py --conf confs/subject1.conf dataset.data_folder=/path/to/datasets
    python scripts/check_dataset.py --path data/datasets/subject1          # a subject folder, or one video folder

Exit code: 0 no problems, 1 problems found, 2 usage error (bad arguments, missing conf).
"""

import argparse
import logging

from ..data.checker import check_command
from ..progress import set_quiet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", help="a .conf file: check its dataset.train and dataset.test sub_dirs")
    parser.add_argument("--path", action="append", default=[],
                        help="a data folder, a subject folder (<data_folder>/<subject>) or a video folder "
                             "(.../<sub_dir>); repeatable")
    parser.add_argument("--json_name", default=None,
                        help="flame params file name (default: the conf's, or flame_params.json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only, no summary, no progress bars")
    parser.add_argument("overrides", nargs="*",
                        help="conf overrides key=value, e.g. dataset.data_folder=./data/datasets")
    args = parser.parse_intermixed_args(argv)  # key=value overrides anywhere among the options
    if not args.conf and not args.path:
        parser.error("give --conf and/or --path")
    if args.overrides and not args.conf:
        parser.error("conf overrides need --conf")
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    set_quiet(args.quiet)
    return check_command(args.conf, args.path, args.overrides, args.json_name)

