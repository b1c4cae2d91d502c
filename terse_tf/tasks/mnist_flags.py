"""The MNIST source flags that the MNIST-based tasks (affnist, photo_digits) share, and the DataConfig
they read into. The seed of the split is the run's --seed."""

from __future__ import annotations

from absl import flags

from terse_tf.data import mnist


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the MNIST flags in `flag_values`, unless another MNIST task already has."""
  if "data_source" in flag_values:
    return
  flags.DEFINE_enum("data_source", "auto", mnist.SOURCES, "MNIST source. auto: idx when --mnist_dir is set, "
                    "else the 10k digits bundled with the package (offline).", flag_values=flag_values)
  flags.DEFINE_string("mnist_dir", "", "Folder with the four standard MNIST IDX files (.gz or raw).",
                      flag_values=flag_values)
  flags.DEFINE_string("tfds_data_dir", "", "data_dir for --data_source=tfds.", flag_values=flag_values)
  flags.DEFINE_bool("tfds_download", True, "Let TFDS download MNIST when it is not prepared.",
                    flag_values=flag_values)
  flags.DEFINE_integer("num_val", 1000, "Training digits held out for validation.", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_integer("num_heldout_test", 1000, "Test digits held out when the source has no test split.",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer("num_train", 0, "Cap on training digits (0: all that remain).", lower_bound=0,
                       flag_values=flag_values)


def data_config(f: flags.FlagValues) -> mnist.DataConfig:
  """The MNIST flags' DataConfig, split by the run's --seed."""
  return mnist.DataConfig(source=f.data_source, mnist_dir=f.mnist_dir, tfds_data_dir=f.tfds_data_dir,
                          tfds_download=f.tfds_download, num_val=f.num_val, num_heldout_test=f.num_heldout_test,
                          num_train=f.num_train, seed=f.seed)
