"""autotrans: self-configuring 3D cross-modality medical image translation."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

CONSOLE_SCRIPTS = [
    "autotrans_plan_and_preprocess=autotrans.cli.plan_and_preprocess:main_plan_and_preprocess",
    "autotrans_extract_fingerprint=autotrans.cli.plan_and_preprocess:main_extract_fingerprint",
    "autotrans_plan_experiment=autotrans.cli.plan_and_preprocess:main_plan_experiment",
    "autotrans_preprocess=autotrans.cli.plan_and_preprocess:main_preprocess",
    "autotrans_check_pairs=autotrans.cli.check_pairs:main",
    "autotrans_install_demo=autotrans.cli.install_demo:main",
    "autotrans_simulate_cbct=autotrans.cli.simulate_cbct:main",
    "autotrans_convert=autotrans.cli.convert:main",
    "autotrans_dicom2nifti=autotrans.cli.dicom2nifti:main",
    "autotrans_nifti2dicom=autotrans.cli.nifti2dicom:main",
    "autotrans_train=autotrans.cli.train:main",
    "autotrans_predict=autotrans.cli.predict:main",
    "autotrans_export_model=autotrans.cli.export_model:main",
    "autotrans_install_model=autotrans.cli.install_model:main",
    "autotrans_evaluate=autotrans.cli.evaluate:main",
    "autotrans_dose=autotrans.cli.dose:main",
    "autotrans_benchmark=autotrans.cli.benchmark:main",
    "autotrans_demo=autotrans.cli.demo:main",
    "autotrans_turing=autotrans.cli.turing:main",
]

# Dose evaluation (autotrans_dose): pyRadPlan's pencil-beam engines ship their machine data in the wheel. Optional
# because its dependency tree is heavy. pyRadPlan 0.5 crashes in its beamlet serializer with pydantic 2.14.
DOSE = ["pyRadPlan>=0.5,<0.6", "pydantic<2.14"]

setup(
    name="autotrans",
    version="0.1.0",
    description="nnU-Net-style self-configuring framework for 3D cross-modality medical image translation",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["autotrans", "autotrans.*"]),
    include_package_data=True,
    package_data={
        "autotrans.dataset": ["demo_data/*.md", "demo_data/*/*.json", "demo_data/*/*/*.nii.gz"],
        "autotrans.turing": ["static/*"],
    },
    install_requires=[
        # Any torch build the user installed first (e.g. the CPU wheel) satisfies this; nothing here pins torch or
        # torchvision. torchvision arrives via dynamic-network-architectures -> timm and pins torch exactly, so the
        # README says to install the matching torchvision with a CPU torch (or to pass a torch constraint).
        "torch>=2.1,<3",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "nibabel>=5.0",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "dynamic-network-architectures>=0.3.1",
        "scikit-learn>=1.2",
        "scikit-image>=0.21",
        "blosc2>=2.5",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "pydicom>=2.3",
        "scikit-posthocs>=0.9",
        "monai>=1.4",  # AutoencoderKL, DiffusionModelUNet, ControlNet, PatchDiscriminator, DDPM/DDIM (latent models)
    ],
    extras_require={
        "dose": DOSE,
        # the tests run every feature, dose included; pymedphys' gamma is the reference ours is tested against
        "test": ["pytest>=7", "nnunetv2>=2.5", "selenium>=4.10", "torchmetrics>=1.0", "statsmodels>=0.13",
                 "pymedphys>=0.39", *DOSE],
    },
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
