#!/usr/bin/env bash
# Makes test images for the Animoto example (there is no internet to take photos
# from): N images of mixed formats, sizes and shapes, drawn by ffmpeg.
#
#   examples/animoto/make-images.sh [DIR] [N]
#
# DIR defaults to /tmp/cloudkon-animoto-images (the path examples/workloads/animoto.txt
# uses), N to 12. Images cycle through 1920x1080 JPEG, 640x480 PNG, 480x800 JPEG
# (portrait) and 1280x1024 PNG, named img-01.jpg, img-02.png, ...
set -euo pipefail
dir="${1:-/tmp/cloudkon-animoto-images}"
count="${2:-12}"
command -v ffmpeg >/dev/null || { echo "make-images: ffmpeg not found: apt-get install ffmpeg" >&2; exit 1; }
mkdir -p "$dir"
sizes=(1920x1080 640x480 480x800 1280x1024)
exts=(jpg png jpg png)
for ((i = 1; i <= count; i++)); do
  k=$(((i - 1) % 4))
  name=$(printf 'img-%02d.%s' "$i" "${exts[$k]}")
  # A different hue per image, so that the video visibly changes every second.
  ffmpeg -v error -nostdin -y -f lavfi -i "testsrc2=size=${sizes[$k]}:rate=1,hue=h=$((i * 29))" \
    -frames:v 1 "$dir/$name"
done
echo "made $count images in $dir"
