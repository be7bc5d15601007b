#!/usr/bin/env bash
# The whole pipeline on the built-in synthetic CelebA, small enough for a laptop CPU (a few minutes):
# generate -> build records -> inspect -> train -> evaluate -> predict. Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO_DIR:-data/demo}
RUN=${DEMO_RUN:-runs/demo}
step() { printf '==> %s\n' "$*"; }

if [[ ! -f "$DEMO/celeba/list_attr_celeba.txt" ]]; then
  step "Generating a synthetic CelebA download (4000 faces, CelebA's file formats)"
  rm -rf "$DEMO/celeba"
  python -m preprocessing.synthetic_celeba --output_dir="$DEMO/celeba" --num_images=4000
fi

step "Building 64 px TFRecords with fixed splits (the Beam job)"
python -m preprocessing.build_records --celeba_dir="$DEMO/celeba" --output_dir="$DEMO/tfrecords" \
  --split_sizes=2400,300,300 --image_size=64 --overwrite

step "Inspecting the records"
python -m preprocessing.inspect_records --data_dir="$DEMO/tfrecords" --samples=16

step "Training frozen VGG16 + dense head (random VGG weights: ImageNet's cannot be downloaded offline)"
python -m trainer.main --data_dir="$DEMO/tfrecords" --model_dir="$RUN" --weights=none --fresh \
  --epochs=60 --batch_size=32 --lr=1e-3

step "Re-evaluating the exported model on the test split"
python -m trainer.evaluate --model_dir="$RUN" --split=test

step "Predicting two raw images (file, predicted class, P(male)), then their true labels"
python -m trainer.predict --model_dir="$RUN" "$DEMO/celeba/img_align_celeba/004000.jpg" \
  "$DEMO/celeba/img_align_celeba/003999.jpg"
python - "$DEMO/celeba/list_attr_celeba.txt" 004000.jpg 003999.jpg <<'EOF'
import sys
lines = open(sys.argv[1]).read().splitlines()
male = lines[1].split().index("Male")
labels = {row.split()[0]: row.split()[1 + male] for row in lines[2:]}
for name in sys.argv[2:]:
    print(f"{name}\ttrue label: {'male' if labels[name] == '1' else 'female'}")
EOF

step "Done. Outputs: $DEMO/tfrecords (records), $RUN (history.csv, learning_curves.png, metrics.json, export/)"
