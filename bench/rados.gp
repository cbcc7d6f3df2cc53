# rados.gp: the plot of bench/rados.sh (snapvol on RADOS vs librbd).
#
# Three panels: (1) IOPS per workload, librbd and snapvol side by side (log
# scale: 1 MiB and 4 KiB rows differ 100x); (2) snapvol / librbd per
# workload, with the goal lines (0.8: within 20% without a snapshot; 1.0:
# ahead after one); (3) snapshot create and change listing times, commands
# and APIs (log scale, lower is better).
# Called as: gnuplot -e "dir='DATADIR'; out='FILE.png'; ttl='TITLE'" rados.gp
# where DATADIR holds fio.dat and times.dat from `radosbench.py dat`.
set terminal pngcairo size 1800,650 font ",10"
set output out
set multiplot layout 1,3 title ttl font ",13"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set datafile separator "\t"
set datafile missing "NaN"
set key top right
set xtics rotate by -30 nomirror

set title "IOPS (fio, QD16, one job)"
set logscale y
set ylabel "IOPS"
plot dir.'/fio.dat' using 2:xtic(1) title columnheader(2) lc rgb "#c0504d", \
     '' using 3 title columnheader(3) lc rgb "#4f81bd"

set title "snapvol / librbd IOPS (dashed: 0.8, the goal without a snapshot; solid: 1.0, after one)"
unset logscale y
set ylabel "ratio"
set key autotitle columnhead
stats dir.'/fio.dat' using 4 nooutput
set yrange [0:(STATS_max > 1.15 ? STATS_max * 1.1 : 1.25)]
set arrow 1 from graph 0, first 0.8 to graph 1, first 0.8 nohead dt 2 lc rgb "#808080"
set arrow 2 from graph 0, first 1.0 to graph 1, first 1.0 nohead dt 1 lc rgb "#000000"
plot dir.'/fio.dat' using 4:xtic(1) notitle lc rgb "#4f81bd"
unset arrow 1
unset arrow 2

set title "snapshot create and change listing (lower is better)"
set logscale y
set yrange [*:*]
set ylabel "ms"
plot dir.'/times.dat' using 2:xtic(1) title columnheader(2) lc rgb "#c0504d", \
     '' using 3 title columnheader(3) lc rgb "#4f81bd"
unset multiplot
