# A SeaweedFS cluster on 127.0.0.1 for the benchmarks, the tests' own (tests/src/seaweed.rs): a master keeping
# two copies of every object on different volume servers, three volume servers, a filer with its S3 gateway.
# Sourced after lib.sh; the caller sets WORK (the cluster lives in $WORK/seaweed) and stops it on exit with
# stop_seaweed. `start_seaweed BUCKET...` starts it, exports the AWS variables that point livemount, boto3 and
# restic at it (and LIVEMOUNT_CACHE into $WORK), and creates the buckets.

# The gateway's one identity (the tests' own).
S3_ACCESS_KEY=livemount-test
S3_SECRET_KEY=livemount-test-secret
SW=""             # the cluster's folder
SW_PIDS=()        # the weed processes
S3_PORT="" METRICS_PORT=""
# SeaweedFS's volume servers: their count, and the offset of each gRPC port from its HTTP port.
VOLUMES=3
GRPC_OFFSET=10000

# Stops the cluster at once (SIGKILL: its data goes with the run's folder).
stop_seaweed() {
    local pid
    for pid in "${SW_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${SW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    SW_PIDS=()
}

# weed_start NAME ARGS...: `weed ARGS` in the cluster's folder, which is also its HOME (so no security.toml,
# filer.toml or master.toml of this machine applies), with no WEED_* variable (they override its settings),
# log in NAME.log; SIGKILL when this script dies (setpriv --pdeathsig).
weed_start() {
    local name=$1; shift
    (
        cd "$SW"
        while read -r v; do unset "$v"; done < <(compgen -e | grep '^WEED_' || true)
        HOME=$SW exec setpriv --pdeathsig KILL weed "$@"
    ) < /dev/null >> "$SW/$name.log" 2>&1 &
    SW_PIDS+=("$!")
}

start_seaweed() {
    local master filer v ports=() n bucket
    SW=$WORK/seaweed
    mkdir -p "$SW/master" "$SW/filer"
    # HTTP ports (each with its gRPC port, + 10000) of the master, the filer, its S3 gateway and each volume
    # server, and the filer's metrics port (which serves the gateway's metrics: same process).
    read -r -a ports < <(python3 "$REPORT_PY" free-port-pairs $((VOLUMES + 4)))
    master=${ports[0]} filer=${ports[1]} S3_PORT=${ports[2]} METRICS_PORT=${ports[3]}
    printf '{"identities":[{"name":"%s","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
        "$S3_ACCESS_KEY" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" > "$SW/s3.json"
    log "SeaweedFS $(weed version 2>/dev/null | awk '{print $3}') on 127.0.0.1: master :$master, filer :$filer, S3 :$S3_PORT, metrics :$METRICS_PORT"
    # One master, no Raft peers, no telemetry; volumes of 64 MiB, two copies of each (on other servers).
    weed_start master master -ip=127.0.0.1 -ip.bind=127.0.0.1 "-port=$master" "-port.grpc=$((master + GRPC_OFFSET))" \
        "-mdir=$SW/master" -defaultReplication=001 -peers=none -telemetry=false -volumeSizeLimitMB=64
    for n in $(seq 0 $((VOLUMES - 1))); do
        v=${ports[$((4 + n))]}
        mkdir -p "$SW/volume$n"
        # 100 volume slots each; read-only only below 256 MiB free; no 10 s pause on a stop.
        weed_start "volume$n" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 "-port=$v" "-port.grpc=$((v + GRPC_OFFSET))" \
            "-dir=$SW/volume$n" "-master=127.0.0.1:$master" -max=100 -minFreeSpace=256MiB -preStopSeconds=0
    done
    # The filer and its S3 gateway: sockets in the folder (their defaults in /tmp are shared by every cluster of
    # the machine), the Iceberg and Lance catalogs off (fixed ports), buckets as AWS has them (no bucket made by
    # a PutObject, no recursive DeleteBucket).
    weed_start filer filer -ip=127.0.0.1 -ip.bind=127.0.0.1 "-port=$filer" "-port.grpc=$((filer + GRPC_OFFSET))" \
        "-master=127.0.0.1:$master" "-defaultStoreDir=$SW/filer" "-localSocket=$SW/filer.sock" \
        "-metricsPort=$METRICS_PORT" -s3 "-s3.port=$S3_PORT" "-s3.port.grpc=$((S3_PORT + GRPC_OFFSET))" \
        "-s3.config=$SW/s3.json" "-s3.localSocket=$SW/s3.sock" -s3.port.iceberg=0 -s3.port.lance=0 \
        -s3.autoCreateBucket=false -s3.allowDeleteBucketNotEmpty=false

    # The AWS SDK's default chain (livemount), boto3 and restic all read these: the gateway, its identity, a
    # region, and empty config and credentials files so that this machine's own are never read.
    : > "$SW/aws-config"
    : > "$SW/aws-credentials"
    export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY \
        AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
        AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=$SW/aws-config AWS_SHARED_CREDENTIALS_FILE=$SW/aws-credentials
    unset AWS_PROFILE AWS_SESSION_TOKEN
    export LIVEMOUNT_CACHE=$WORK/livemount-cache

    if ! python3 "$REPORT_PY" seaweed-ready "$master" "$S3_PORT" "$VOLUMES" 60 "${SW_PIDS[@]}"; then
        local f
        for f in "$SW"/*.log; do echo "--- $f" >&2; tail -15 "$f" >&2; done
        die "SeaweedFS did not come up"
    fi
    for bucket in "$@"; do python3 "$REPORT_PY" s3 create "$bucket"; done
}

